"""The lab: network namespaces, veth legs, traffic and a conntrack oracle.

Shared by the integration tests and the benchmarks; every helper cleans up
after itself, even when the test using it fails.
"""
