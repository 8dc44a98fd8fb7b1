"""The README's complete examples run, and print what the README says."""
import contextlib
import io
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks():
    text = open(README).read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.cpu_only("the README prints the CPU's output")
def test_five_lines_example():
    code = _blocks()[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README five lines", "exec"), {})
    assert "tensor([ 0.726862  , -0.6397    ,  0.13621867])" in out.getvalue()


def test_ten_line_mlp_training_example():
    code = _blocks()[1]
    assert len([line for line in code.strip().splitlines()]) <= 10
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README MLP", "exec"), {})
    assert float(out.getvalue().strip()) < 0.22 / 10
