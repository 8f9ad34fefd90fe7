"""Analysis of a sweep's runs: frontiers, Pareto sets, statistics, tables and plots (no Ray)."""
