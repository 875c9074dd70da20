"""main.py as a user meets it: the summary table and one-line errors."""

import helpers


def test_lenet5_summary_prints_the_notes_table(data_dir):
  code, out, err = helpers.run(['--config=configs/lenet5.py', '--mode=summary'], data_dir)
  assert code == 0, err[-2000:]
  rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
  expected = {
    'conv1': ('(28, 28, 6)', '456'),
    'pool1': ('(14, 14, 6)', '0'),
    'conv2': ('(10, 10, 16)', '2,416'),
    'pool2': ('(5, 5, 16)', '0'),
    'fc3': ('(120,)', '48,120'),
    'fc4': ('(84,)', '10,164'),
    'logits': ('(10,)', '850'),
  }
  for name, (shape, params) in expected.items():
    assert shape in rows[name], rows[name]
    assert rows[name].split()[-2] == params, rows[name]


def test_missing_dataset_is_one_line_without_traceback(tmp_path, data_dir):
  code, out, err = helpers.run(
    ['--config=configs/resnet.py', '--config.dataset=cifar10', f'--workdir={tmp_path}/w'],
    data_dir,
  )
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1, err  # one line, no traceback, no library noise
  line = lines[0]
  assert line.startswith("error: dataset 'cifar10' is not prepared in ")
  assert 'python -m cnn_jax.data.prepare cifar10' in line


def test_unknown_model_lists_closest_names(tmp_path, data_dir):
  code, out, err = helpers.run(
    ['--config=configs/resnet.py', '--config.model.name=resnet5', f'--workdir={tmp_path}/w'],
    data_dir,
  )
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  line = lines[0]
  assert line.startswith("error: unknown model 'resnet5'; closest registered names: ")
  assert not (tmp_path / 'w').exists()  # nothing written for a run that could not start
  assert 'resnet50' in line and 'resnet56' in line
