"""isnet.core.memory: freed memory kept for loops that reuse it, or returned to the system at once."""

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


RETURN_CHILD = """
import os, sys
import numpy as np
from isnet.core.memory import return_freed_memory
if sys.argv[1] == "return":
    assert return_freed_memory()
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
big = np.ones(1 << 19)  # 4 MB, mapped on its own; freeing it raises glibc's threshold to 4 MB
del big
before = rss_mb()
blocks = [np.ones(3 << 16) for _ in range(200)]  # 200 x 1.5 MB: from the heap once the threshold rose
pin = [bytearray(64) for _ in range(1000)]  # small blocks after them keep the heap's top in use
del blocks
print(rss_mb() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_blocks_of_a_megabyte_go_back_to_the_system():
    held = {mode: float(subprocess.run([sys.executable, "-c", RETURN_CHILD, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "return")}
    # 300 MB allocated and freed: by default most of it stays in the process; returned, almost none.
    assert held["default"] > 200, held
    assert held["return"] < 30, held
