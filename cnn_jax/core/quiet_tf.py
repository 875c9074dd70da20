"""TensorFlow and tensorflow-datasets, imported without their start-up log on stderr.

TensorFlow serves tf.data and tfds only. Its C++ side logs at import through absl before absl's
logging is set up, so TF_CPP_MIN_LOG_LEVEL no longer silences it (TF 2.21): on a processor with
AVX-512 or AMX, or with TF_ENABLE_ONEDNN_OPTS=1, every process printed four lines ("WARNING: All
log messages before absl::InitializeLog() ...", "I0000 ... port.cc:153] oneDNN custom operations
are on ...") before anything of ours, and a one-line `error:` became five. Here the import runs
with file descriptor 2 pointed at a temporary file; what TensorFlow wrote there is then replayed
on stderr except its log records below TF_CPP_MIN_LOG_LEVEL (main.py sets 2: errors only;
`TF_CPP_MIN_LOG_LEVEL=0` shows them all).

Every module of the package takes `tf` and `tfds` from here, never from `import tensorflow`.
"""

import os
import re
import sys
import tempfile

# 'I1207 18:08:18.123 4795 port.cc:153] ...' (absl/glog prefix: severity letter, date, time).
_RECORD = re.compile(r'^([IWEF])\d{4} \d\d:\d\d:\d\d')
_LEVELS = {'I': 0, 'W': 1, 'E': 2, 'F': 3}
_PREAMBLE = 'WARNING: All log messages before absl::InitializeLog() is called'


def filter_log(text: str, min_level: int) -> str:
  """`text` without the absl log records below `min_level` (0 info ... 3 fatal) and absl's
  preamble line; lines that continue a record go with it, other lines are kept."""
  kept, level = [], None
  for line in text.splitlines():
    if line.startswith(_PREAMBLE):
      continue
    record = _RECORD.match(line)
    if record:
      level = _LEVELS[record.group(1)]
    if level is None or level >= min_level:
      kept.append(line)
  return '\n'.join(kept) + ('\n' if kept else '')


def _import_quietly() -> None:
  if 'tensorflow' in sys.modules:
    return
  try:
    min_level = int(os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2'))
  except ValueError:
    min_level = 2
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: F401
    finally:
      os.dup2(saved, 2)
      os.close(saved)
    captured.seek(0)
    text = captured.read().decode(errors='replace')
  sys.stderr.write(filter_log(text, min_level))


_import_quietly()

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

__all__ = ['filter_log', 'tf', 'tfds']
