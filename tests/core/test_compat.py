"""The 0.1 import paths keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

from flowcond._compat import OLD_PATHS


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_every_old_path_names_modules_that_exist(old):
    for target in OLD_PATHS[old]:
        importlib.import_module(target)


def test_old_paths_import_with_a_warning_and_give_the_same_objects():
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("error")  # a missing warning or an unexpected one fails
        import flowcond
        from flowcond import attach as new_attach, AttachConfig as NewConfig, Heads as NewHeads
        try:
            import flowcond.heads
        except DeprecationWarning as w:
            assert "flowcond.caglow.heads" in str(w), w
        else:
            raise AssertionError("no DeprecationWarning")
        warnings.simplefilter("ignore")
        from flowcond.attach import AttachConfig, Lambdas, attach
        from flowcond.heads import Heads
        from flowcond.evaluator import Evaluator, train_evaluator
        from flowcond.train_backbone import TrainConfig, train_backbone
        from flowcond.plugins import condition_kinds
        import flowcond.attach
        assert attach is new_attach and AttachConfig is NewConfig and Heads is NewHeads
        assert flowcond.attach.attach is new_attach
        assert callable(flowcond.attach)  # the module stands in for the function it shadows
        try:
            from flowcond.heads import NoSuchName
        except ImportError:
            pass
        else:
            raise AssertionError("unknown names must not resolve")
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
