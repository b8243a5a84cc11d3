"""retain_freed_memory: large arrays freed and allocated again stop faulting pages in."""

import platform
import subprocess
import sys

import pytest

CHILD = """
import resource, sys
import numpy as np
from isnet.core.memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def one_image():
    # Several 1 MB arrays alive at once, then all freed: what scoring one image does.
    arrays = [np.ones(1 << 17) for _ in range(8)]
    return sum(float(a.sum()) for a in arrays)
one_image()  # first use: the pages are faulted in once either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    one_image()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _transparent_huge_pages_always() -> bool:
    try:
        return "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.skipif(_transparent_huge_pages_always(), reason="huge pages fault 2 MB at a time")
def test_freed_arrays_are_reused_instead_of_faulted_in_again():
    faults = {mode: int(subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "retain")}
    # 20 images x 8 MB is 40,960 pages: by default glibc trims the freed heap after each image and
    # faults most of them in again; with freed memory retained, almost none.
    assert faults["default"] > 20_000, faults
    assert faults["retain"] < 1_000, faults
