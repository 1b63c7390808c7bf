import os
import sys
from pathlib import Path

from torch.utils.cpp_extension import get_default_build_root

# The oracle is a plain module beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

# Command-line tests run `frcnn` with a private XDG_CACHE_HOME (for the synthetic data); without
# this, torch's extension loader would follow it and build the compiled kernels again per folder.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", get_default_build_root())
