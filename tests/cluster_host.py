"""The host name an Airflow process of the cluster tier reports (`[core] hostname_callable`): the two
Celery workers run on one machine, and each stands for a host of its own, named by GEMINI_CLUSTER_HOST.
Kept tiny: every task process imports it."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("GEMINI_CLUSTER_HOST") or socket.getfqdn()
