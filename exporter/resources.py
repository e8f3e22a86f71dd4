"""The process's own resources: the open-file limit."""
from __future__ import annotations

import logging
import resource

log = logging.getLogger("connhealth.server")

def raise_fd_limit(probes: int) -> None:
    """Raise the soft open-file limit to the hard one, as Go's runtime does; warn when it stays low
    for ``probes`` concurrent probes (a probe holds one socket, a redirect or DNS query briefly two)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:  # e.g. an unlimited hard limit above fs.nr_open
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    needed = 2 * probes + 100
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open-file limit %d is low for %d concurrent probes (about %d needed): probes beyond it fail "
                    "with resource_exhausted; raise it (ulimit -n, LimitNOFILE=) or lower the concurrency",
                    soft, probes, needed)
