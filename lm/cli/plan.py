"""`python -m lm plan`: will an experiment fit on N devices? Compiles its train step ahead
of time for N CPU devices of this process and runs nothing (lm/train/plan.py says how).

    python -m lm plan --config experiments/<file>.py[:<arg>] --devices 64 \\
        [--device_memory 80GB] [--devices_per_host 8] [--json] [--config.<key>=<value> ...]
"""

import json
import os
import sys

from lm import config as config_lib
from lm import units
from lm.cli import common

USAGE = __doc__


def main(argv: list[str]) -> None:
    """argv[0] is the command name ('plan')."""
    parser = common.parser("plan", USAGE)
    parser.add_argument("--devices", type=int, required=True, help="devices to plan for")
    parser.add_argument("--device_memory", default="", help="per device, e.g. 80GB or 16GiB")
    parser.add_argument("--devices_per_host", type=int, default=0,
                        help="for tp presets and the host axes (default: min(devices, 8))")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    flags, overrides = common.parse(parser, argv[1:])
    if flags.devices < 1 or flags.devices_per_host < 0:
        parser.error(f"--devices {flags.devices} --devices_per_host {flags.devices_per_host}: "
                     "--devices must be >= 1 and --devices_per_host >= 0 (0 = min(devices, 8))")
    from lm.train import plan  # imports no jax: the device count below is set before it

    memory = units.parse_bytes(flags.device_memory) if flags.device_memory else None
    # Before JAX starts: N CPU devices in this process (compiling needs no collective).
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = " ".join(
        [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
        + [f"--xla_force_host_platform_device_count={flags.devices}",
           "--xla_backend_optimization_level=0"])  # same buffers, half the compile time
    title, config = flags.config, config_lib.load(flags.config, overrides)
    import jax

    if jax.device_count() < flags.devices:
        sys.exit(f"error: JAX started before `lm plan` could ask for {flags.devices} devices; "
                 "run it in a fresh process")
    log = (lambda line: print(line, file=sys.stderr, flush=True))
    per_host = flags.devices_per_host or min(flags.devices, 8)
    result = plan.plan(config, jax.devices()[:flags.devices], devices_per_host=per_host,
                  device_memory=memory, log=log)
    print(json.dumps(result, indent=1) if flags.json else plan.report(result, title))
