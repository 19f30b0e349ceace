"""What a training process imports at start-up."""

import os
import subprocess
import sys


def test_the_trainer_does_not_import_torch():
    """tensorboardX imports torch when it is installed (1.5 s of every run's start-up, to
    accept torch tensors we never log); lm.train.writer keeps it out."""
    code = ("import sys, lm.cli.train, lm.train.loop, lm.train.writer as m; "
            "assert m.tensorboardX.SummaryWriter; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"JAX_PLATFORMS": "cpu", **os.environ})
    assert out.stdout.strip() == "False"
