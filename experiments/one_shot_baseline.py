"""One-shot evaluation of an untrained encoder: what the triplet loss has to beat.

  python -m experiments.one_shot_baseline                         # configs/triplet.py as shipped
  python -m experiments.one_shot_baseline --workdir runs/triplet  # and a trained run beside it

Builds the run of configs/triplet.py (with --override field=value pairs, e.g.
--override triplet.mining=hard), evaluates its freshly initialised encoder (config.seed's weights)
exactly as the trained run is evaluated (cnn_jax/tasks/: Triplet.finalize: threshold from
the seen classes' test pairs, one-shot on the held-out classes over 20 reference draws), and
prints both as JSON. Random features of a ResNet already separate digits far above chance, so a
trained encoder is only useful if it does better than this on classes it never saw.
"""

import argparse
import ast
import functools
import json
import os
import tempfile

from cnn_jax import train
from configs import triplet


def untrained(config) -> dict[str, float]:
  with tempfile.TemporaryDirectory() as workdir:
    exp = train.build(config, workdir)
    state = exp.runner.put_state(train.initial_state(exp))
    step = functools.partial(train.eval_step, model=exp.model, task=exp.task)
    return train.evaluate(exp, state, exp.runner.compile_eval(step), 'test')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='', help='a trained run of the same config to compare')
  parser.add_argument('--override', nargs='*', default=[], help='field=value, e.g. seed=1')
  args = parser.parse_args()
  config = triplet.get_config()
  for item in args.override:
    key, value = item.split('=', 1)
    *path, last = key.split('.')
    node = config
    for part in path:
      node = node[part]
    try:
      node[last] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[last] = value  # a string
  result = {'untrained': untrained(config)}
  if args.workdir:
    with open(os.path.join(args.workdir, 'summary.json')) as f:
      summary = json.load(f)
    result['trained'] = {k[len('test_') :]: v for k, v in summary.items() if k.startswith('test_')}
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  main()
