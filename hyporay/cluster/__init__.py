"""Clusters: connecting to Ray and sizing trials, and checking cluster-launcher files offline."""
