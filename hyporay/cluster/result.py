"""What a check of a cluster-launcher file finds (``Result``: problems, notes, summary) and the names both layers
of the check share (``hyporay.cluster.validate`` runs Ray's checks then ``hyporay.cluster.rules``)."""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

STORAGE_ENV = "HYPORAY_STORAGE_PATH"
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://")
PLACEHOLDER = re.compile(r"CHANGE-?ME", re.IGNORECASE)
# RFC 5737 documentation networks: addresses that cannot be the user's real machines
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


@dataclass
class Result:
    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # not errors: placeholders left to fill in
    summary: str = ""

    @property
    def valid(self) -> bool:
        return not self.problems


def short(v: Any, n: int = 60) -> str:
    """A value as JSON, cut to ``n`` characters (problem lines stay one line)."""
    s = json.dumps(v, default=str)
    return s if len(s) <= n else s[:n - 3] + "..."
