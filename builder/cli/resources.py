"""The resource-limit flags of `lamina build`, with docker's names and meaning:
``-m/--memory`` (bytes, k/m/g suffixes), ``--memory-swap`` (memory plus swap; -1:
unlimited swap), ``--pids-limit`` (-1: unlimited; default
builder.sandbox.limits.DEFAULT_PIDS_LIMIT), ``--cpu-shares``, ``--cpu-period``,
``--cpu-quota`` (microseconds), ``--cpuset-cpus``. Each RUN step gets them through
its own cgroup (builder.sandbox.cgroups).

    @resource_options        # on the click command, whose function takes **flags
    limits = parse_limits(flags)
"""

from __future__ import annotations

from typing import Callable, Mapping

import click

from lamina.builder.errors import BuildError
from lamina.store.errors import StoreError

_OPTIONS = (
    click.option("-m", "--memory", "memory", metavar="BYTES", default=None,
                 help="Memory limit of each RUN step (e.g. 512m, 2g)."),
    click.option("--memory-swap", "memory_swap", metavar="BYTES", default=None,
                 help="Memory plus swap of each RUN step; -1: unlimited swap "
                      "(default: twice --memory)."),
    click.option("--pids-limit", "pids_limit", type=int, default=None, metavar="N",
                 help="Processes and threads of each RUN step (-1: unlimited; default 4096)."),
    click.option("--cpu-shares", "cpu_shares", type=int, default=None, metavar="N",
                 help="CPU shares (relative weight) of each RUN step."),
    click.option("--cpu-period", "cpu_period", type=int, default=None, metavar="US",
                 help="CPU CFS period of each RUN step, in microseconds."),
    click.option("--cpu-quota", "cpu_quota", type=int, default=None, metavar="US",
                 help="CPU CFS quota of each RUN step, in microseconds per period."),
    click.option("--cpuset-cpus", "cpuset_cpus", default=None, metavar="LIST",
                 help="CPUs each RUN step may use (0-3, 0,1)."),
)

FLAG_NAMES = ("memory", "memory_swap", "pids_limit", "cpu_shares", "cpu_period", "cpu_quota",
              "cpuset_cpus")


def resource_options(fn: Callable) -> Callable:
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def _bytes(flag: str, text: str | None, allow_unlimited: bool = False) -> int | None:
    if text is None:
        return None
    if allow_unlimited and text.strip() == "-1":
        return -1
    from lamina.builder.cli.units import parse_size

    try:
        value = parse_size(text)
    except StoreError:
        raise BuildError(f"invalid {flag} {text!r}: expected bytes such as 512m or 2g"
                         + (" (or -1)" if allow_unlimited else "")) from None
    if value <= 0:
        raise BuildError(f"invalid {flag} {text!r}: must be positive")
    return value


def parse_limits(flags: Mapping[str, object]):
    """The `Limits` (builder.sandbox.limits) the flags ask for."""
    from lamina.builder.sandbox.limits import Limits

    pids = flags.get("pids_limit")
    limits = Limits(
        memory=_bytes("--memory", flags.get("memory")),
        memory_swap=_bytes("--memory-swap", flags.get("memory_swap"), allow_unlimited=True),
        pids=None if pids is None else (-1 if pids <= 0 else pids),
        cpu_shares=flags.get("cpu_shares"),
        cpu_quota=flags.get("cpu_quota"),
        cpu_period=flags.get("cpu_period"),
        cpuset_cpus=flags.get("cpuset_cpus"))
    limits.validate()
    return limits
