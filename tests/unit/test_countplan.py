"""Which dumps count the offloaded flows: the cheaper side by the last count."""

from __future__ import annotations

import socket

from offloadd.core.countplan import Estimate, derived_cost, direct_cost, walk_family


def test_first_count_dumps_ipv6_and_the_rest() -> None:
    assert walk_family(None) == socket.AF_INET6


def test_mostly_offloaded_ipv4_derives_ipv4() -> None:
    # 1M offloaded IPv4 flows, 1k not offloaded: three walks that send ~1k.
    assert walk_family(Estimate(ipv4=1_000_000, ipv6=0, total=1_001_000)) == socket.AF_INET6


def test_mostly_offloaded_ipv6_derives_ipv6() -> None:
    assert walk_family(Estimate(ipv4=10, ipv6=900_000, total=900_500)) == socket.AF_INET


def test_mostly_not_offloaded_counts_directly() -> None:
    assert walk_family(Estimate(ipv4=1_000, ipv6=0, total=1_000_000)) == socket.AF_UNSPEC


def test_even_split_counts_directly_when_the_third_walk_costs_more() -> None:
    # Half offloaded, all IPv4: direct sends 500k, derived 500k as well plus a walk.
    e = Estimate(ipv4=500_000, ipv6=0, total=1_000_000)
    assert derived_cost(e, socket.AF_INET6) > direct_cost(e)
    assert walk_family(e) == socket.AF_UNSPEC


def test_empty_table_counts_directly() -> None:
    assert walk_family(Estimate(0, 0, 0)) == socket.AF_UNSPEC


def test_total_lagging_the_last_count_is_not_negative() -> None:
    assert Estimate(ipv4=10, ipv6=5, total=3).not_offloaded == 0
