"""Fault injection for the reliability suite and the soak benchmark (issue #8).

Real faults on real processes: `impair` is a TCP proxy that delays, jitters, stalls and cuts
a byte stream between a client and the broker (the kernel here has no `sch_netem`, so
`tc netem` is not available; the proxy reproduces what those faults look like above TCP).
"""
