"""The project's experiments: each module runs from the repository root as
`python -m experiments.<name>` (`python -m experiments.run_all --list` lists the claims ones).

Results go to experiments/results/, written through experiments.common (one JSON / markdown /
figure writer and one machine stamp for every script).
"""

import os

# TensorFlow serves tf.data only: its errors, not its info lines (main.py does the same).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
