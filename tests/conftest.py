import sys
from pathlib import Path

# Make the oracle helpers importable as a plain module.
sys.path.insert(0, str(Path(__file__).parent))
