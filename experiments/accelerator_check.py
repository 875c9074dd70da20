"""The CLI itself on whatever accelerator JAX sees: every number below comes from `python main.py`
runs (their summary.json and metrics.jsonl), not from a benchmark harness.

  python -m experiments.accelerator_check              # GPU/TPU: the full check
  python -m experiments.accelerator_check --tiny       # anywhere: tiny models (3 min, 2-core CPU)
  python -m experiments.accelerator_check --rows resnet50,determinism --steps 60

Rows (`--rows`, in this order; each a fresh process, so each compiles cold):

  resnet50       ResNet-50 (configs/resnet.py:imagenet2012) on synthetic:1000, 224 px, bf16,
                 batch 256: images/s of the steady state (median of the trainer's own train rows
                 after the first, which holds the compile), the first step's trace + compile
                 seconds, peak device memory (the backend's peak_bytes_in_use) and host RSS.
  deterministic  the same with XLA's deterministic GPU kernels (DETERMINISTIC_FLAGS): what they
                 cost in images/s.
  determinism    with DETERMINISTIC_FLAGS and a loss logged every step: one uninterrupted run,
                 and one SIGKILLed mid-run (CNN_JAX_FAULT=saved@<step>: the process kills itself
                 once that step's checkpoint is written, two thirds into the run) then rerun,
                 resuming there. The two must end with the same params_sha256 and the same loss
                 at every step.
  efficientnet   EfficientNet-B0 (configs/efficientnet.py:imagenet2012), as resnet50.
  unet           U-Net (configs/unet.py:pets, base width 64) on synthetic_segmentation:11 at
                 256 px, bf16, batch 64.
  export         `--mode=export --export_format=stablehlo` of the resnet50 run, lowered for CPU
                 and CUDA, checked against the JAX model on this device (no TensorFlow needed).
  compile        the cold compile of the trainer's ResNet-50 step against a bare `jax.jit` of the
                 same model and loss, each in a fresh process (experiments.benchmark's child).

The table goes to stdout and, with every raw number, to <out_dir>/accelerator_check.{json,md}
(after each row, so a run stopped at a time limit keeps what it measured). This parent process
starts no JAX backend: the device is probed in a child, so nothing here holds accelerator memory.
`--tiny` runs the same rows with tiny models, small images and a few steps: what
tests/test_accelerator_check.py runs on the CPU, so the script cannot rot between GPU sessions.
"""

import argparse
import dataclasses
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from experiments import common

# XLA's run-to-run deterministic GPU kernels (openxla docs/determinism.md; with them XLA refuses
# select-and-scatter, so cnn_jax.nn.pooling switches to its own max-pool backward, see
# cnn_jax/core/determinism.py), and one autotuning cache shared by every process of the check:
# XLA picks kernels by timing them, so two processes could otherwise pick different ones.
DETERMINISTIC_FLAGS = '--xla_gpu_deterministic_ops=true'
AUTOTUNE_CACHE_FLAG = '--xla_gpu_per_fusion_autotune_cache_dir={}'
ROWS = ('resnet50', 'deterministic', 'determinism', 'efficientnet', 'unet', 'export', 'compile')
PACKAGES = (
  'jax',
  'jaxlib',
  'jax-cuda12-plugin',
  'jax-cuda13-plugin',
  'libtpu',
  'flax',
  'optax',
  'orbax-checkpoint',
  'ml-collections',
  'numpy',
  'tensorflow',
  'tensorflow-cpu',
)


@dataclasses.dataclass(frozen=True)
class Model:
  """A model row: main.py's config, dataset, size, batch and precision."""

  config: str
  model: str
  dataset: str
  image_size: int
  batch: int
  extra: tuple[str, ...] = ()


FULL = {
  'resnet50': Model('configs/resnet.py:imagenet2012', 'resnet50', 'synthetic:1000', 224, 256),
  'efficientnet': Model(
    'configs/efficientnet.py:imagenet2012', 'efficientnet_b0', 'synthetic:1000', 224, 256
  ),
  'unet': Model(
    'configs/unet.py:pets', 'unet', 'synthetic_segmentation:11', 256, 64, ('base_width=64',)
  ),
}
TINY = {
  'resnet50': Model('configs/resnet.py:imagenet2012', 'resnet_tiny', 'synthetic:10', 16, 8),
  'efficientnet': Model(
    'configs/efficientnet.py:imagenet2012', 'efficientnet_tiny', 'synthetic:10', 32, 8
  ),
  'unet': Model('configs/unet.py:pets', 'unet_tiny', 'synthetic_segmentation:3', 32, 8),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--tiny', action='store_true', help='tiny models, small images, few steps')
  p.add_argument('--rows', default=','.join(ROWS), help=f'comma-separated, of {", ".join(ROWS)}')
  p.add_argument('--steps', type=int, default=0, help='train steps a row (default 100; tiny 6)')
  p.add_argument('--log_every', type=int, default=0, help='train rows every n steps (default 10)')
  p.add_argument('--precision', default='bf16', choices=['bf16', 'fp32'])
  p.add_argument('--out_dir', default=os.path.join(common.RESULTS, 'accelerator'))
  p.add_argument('--workdirs', default='', help='folder of the runs (default: a temporary one)')
  p.add_argument('--timeout', type=float, default=420.0, help='seconds a process may take')
  args = p.parse_args(argv)
  args.rows = [r.strip() for r in args.rows.split(',') if r.strip()]
  unknown = sorted(set(args.rows) - set(ROWS))
  if unknown:
    p.error(f'unknown --rows {", ".join(unknown)}; use some of {", ".join(ROWS)}')
  args.steps = args.steps or (6 if args.tiny else 100)
  args.log_every = args.log_every or (2 if args.tiny else 10)
  if args.steps < 2 * args.log_every:
    p.error(f'--steps ({args.steps}) must be at least twice --log_every ({args.log_every})')
  return args


# ---------------------------------------------------------------------------------------------
# Reading a run


def steady_images_per_sec(rows: list[dict[str, Any]]) -> float | None:
  """The median of the train rows' images_per_sec after the first (whose interval holds the
  first step's compile); None with fewer than two train rows."""
  rates = [r['images_per_sec'] for r in rows if r.get('split') == 'train']
  return statistics.median(rates[1:]) if len(rates) > 1 else None


def train_losses(rows: list[dict[str, Any]]) -> dict[int, float]:
  return {r['step']: r['loss'] for r in rows if r.get('split') == 'train'}


def compare_losses(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
  """How two runs' logged losses agree, step by step."""
  steps = sorted(set(a) | set(b))
  same = [s for s in steps if a.get(s) == b.get(s)]
  diffs = [abs(a[s] - b[s]) for s in steps if s in a and s in b]
  return {
    'steps': len(steps),
    'identical_steps': len(same),
    'first_different_step': next((s for s in steps if a.get(s) != b.get(s)), None),
    'max_abs_diff': max(diffs) if diffs else None,
  }


def _metric_rows(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _summary(workdir: str) -> dict[str, Any]:
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------
# Running main.py


class Runner:
  """Runs main.py and experiments.benchmark children with the check's environment."""

  def __init__(self, args: argparse.Namespace, root: str):
    self.args, self.root = args, root
    self.models = TINY if args.tiny else FULL
    self.autotune_cache = os.path.join(root, 'autotune_cache')

  def env(self, deterministic: bool = False, fault: str = '') -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != 'CNN_JAX_FAULT'}
    if deterministic:
      flags = [DETERMINISTIC_FLAGS, AUTOTUNE_CACHE_FLAG.format(self.autotune_cache)]
      env['XLA_FLAGS'] = ' '.join([env.get('XLA_FLAGS', ''), *flags]).strip()
    if fault:
      env['CNN_JAX_FAULT'] = fault
    env['PYTHONUNBUFFERED'] = '1'
    return env

  def flags(self, key: str, workdir: str, steps: int, log_every: int, ckpt_every: int) -> list:
    m = self.models[key]
    flags = [
      f'--config={m.config}',
      f'--workdir={workdir}',
      f'--config.model.name={m.model}',
      f'--config.dataset={m.dataset}',
      f'--config.image_size={m.image_size}',
      f'--config.batch_size={m.batch}',
      f'--config.eval_batch_size={max(m.batch, 64)}',
      f'--config.half_precision={self.args.precision == "bf16"}',
      f'--config.num_train_steps={steps}',
      f'--config.log_every_steps={log_every}',
      f'--config.checkpoint_every_steps={ckpt_every}',
      '--config.eval_every_steps=0',  # validation and test once, at the end
    ]
    return flags + [f'--config.model.{e}' for e in m.extra]

  def main_py(self, flags: list[str], env: dict[str, str], expect_kill: bool = False) -> float:
    """Runs main.py; its wall seconds. A failure (other than the kill asked for) raises with the
    end of its stderr."""
    print('$', 'python main.py', *flags, flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(
      [sys.executable, 'main.py', *flags],
      cwd=common.ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=self.args.timeout,
    )
    seconds = time.perf_counter() - t0
    killed = done.returncode == -9
    if done.returncode and not (expect_kill and killed):
      raise RuntimeError(f'main.py exited {done.returncode}: {done.stderr.strip()[-1500:]}')
    if expect_kill and not killed:
      raise RuntimeError(f'main.py was to be killed mid-run and exited {done.returncode}')
    return round(seconds, 1)

  def train_row(self, key: str, deterministic: bool = False) -> dict[str, Any]:
    """A throughput row: one uninterrupted run of the model."""
    a, m = self.args, self.models[key]
    workdir = os.path.join(self.root, f'{key}{"_det" if deterministic else ""}')
    shutil.rmtree(workdir, ignore_errors=True)
    flags = self.flags(key, workdir, a.steps, a.log_every, a.steps)
    seconds = self.main_py(flags, self.env(deterministic))
    s = _summary(workdir)
    return {
      'row': key + (' (deterministic)' if deterministic else ''),
      'model': m.model,
      'dataset': m.dataset,
      'image_size': m.image_size,
      'batch': m.batch,
      'precision': a.precision,
      'xla_flags': DETERMINISTIC_FLAGS if deterministic else '',
      'steps': s['steps'],
      'images_per_sec': steady_images_per_sec(_metric_rows(workdir)),
      'compile_seconds': s.get('compile_seconds'),
      'device_peak_mib': s.get('device_peak_mib'),
      'host_peak_rss_mib': s.get('host_peak_rss_mib'),
      'command_seconds': seconds,
      'params_sha256': s['params_sha256'],
      'workdir': workdir,
      'command': 'python main.py ' + ' '.join(flags),
    }

  def determinism_row(self) -> dict[str, Any]:
    """Uninterrupted against SIGKILLed mid-run and resumed, both with DETERMINISTIC_FLAGS."""
    a = self.args
    steps = max(6, a.steps // 3)
    ckpt_every = steps // 3
    kill_at = 2 * ckpt_every  # once its checkpoint is written, before the next step starts
    dirs = {k: os.path.join(self.root, f'determinism_{k}') for k in ('whole', 'killed')}
    for d in dirs.values():
      shutil.rmtree(d, ignore_errors=True)
    whole = self.flags('resnet50', dirs['whole'], steps, 1, ckpt_every)
    killed = self.flags('resnet50', dirs['killed'], steps, 1, ckpt_every)
    seconds = [self.main_py(whole, self.env(True))]
    seconds.append(self.main_py(killed, self.env(True, f'saved@{kill_at}'), expect_kill=True))
    seconds.append(self.main_py(killed, self.env(True)))
    s_whole, s_resumed = _summary(dirs['whole']), _summary(dirs['killed'])
    losses = compare_losses(
      train_losses(_metric_rows(dirs['whole'])), train_losses(_metric_rows(dirs['killed']))
    )
    return {
      'row': 'determinism',
      'model': self.models['resnet50'].model,
      'xla_flags': f'{DETERMINISTIC_FLAGS} {AUTOTUNE_CACHE_FLAG.format("<shared dir>")}',
      'steps': steps,
      'checkpoint_every_steps': ckpt_every,
      'killed_after_step': kill_at,
      'resumed_from_step': s_resumed['resumed_from_step'],
      'fingerprint_whole': s_whole['params_sha256'],
      'fingerprint_resumed': s_resumed['params_sha256'],
      'fingerprints_equal': s_whole['params_sha256'] == s_resumed['params_sha256'],
      'losses': losses,
      'losses_identical': losses['identical_steps'] == losses['steps'] == steps,
      'command_seconds': seconds,
      'command': 'python main.py ' + ' '.join(killed),
    }

  def export_row(self, workdir: str) -> dict[str, Any]:
    """`--mode=export --export_format=stablehlo` of the resnet50 row's run."""
    a = self.args
    # The trained run's own overrides: the export compares its config with config.json.
    trained = self.flags('resnet50', workdir, a.steps, a.log_every, a.steps)
    flags = [*trained[:2], '--mode=export', '--export_format=stablehlo', *trained[2:]]
    seconds = self.main_py(flags, self.env())
    folder = os.path.join(workdir, 'export')
    with open(os.path.join(folder, 'export.json')) as f:
      info = json.load(f)
    files = [os.path.join(folder, n) for n in os.listdir(folder)]
    return {
      'row': 'export',
      'format': info.get('format'),
      'platforms': info.get('platforms'),
      'max_abs_diff': info.get('max_abs_diff'),
      'bytes': sum(os.path.getsize(f) for f in files if os.path.isfile(f)),
      'command_seconds': seconds,
    }

  def compile_row(self) -> dict[str, Any]:
    """Cold compiles of the trainer's step and of the bare jit step, each in a fresh process
    (experiments.benchmark's cold-compile child)."""
    from experiments.benchmark.cold_compile import bench_cold_compile  # imports JAX, starts none

    m = self.models['resnet50']
    out = {'row': 'compile', 'model': m.model, 'batch': m.batch, 'image_size': m.image_size}
    dtype = 'bfloat16' if self.args.precision == 'bf16' else 'float32'
    for step in ('trainer', 'bare'):
      row = bench_cold_compile(m.model, m.batch, m.image_size, dtype, {'device': ''}, step)
      if 'status' in row:
        raise RuntimeError(f'cold compile ({step}) {row["status"]}')
      out[f'{step}_seconds'] = round(row['train_step_compile_s'], 2)
      out[f'{step}_lower_seconds'] = round(row['lower_s'], 2)
    out['trainer_over_bare'] = round(out['trainer_seconds'] / out['bare_seconds'], 2)
    return out


# ---------------------------------------------------------------------------------------------
# The machine and the table


def probe_device() -> dict[str, Any]:
  """What JAX sees, asked in a child process (this one keeps no accelerator memory)."""
  code = (
    'import json, jax; d = jax.devices()[0]; '
    'print(json.dumps({"backend": jax.default_backend(), "device_kind": d.device_kind, '
    '"device_count": jax.device_count()}))'
  )
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)
  if done.returncode:
    return {'backend': 'unknown', 'error': done.stderr.strip()[-300:]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def packages() -> dict[str, str]:
  found = {}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def _fmt(value: Any, spec: str = ',.0f') -> str:
  if value is None:
    return '-'
  return format(value, spec) if isinstance(value, int | float) else str(value)


def table(payload: dict[str, Any]) -> str:
  dev = payload['device']
  lines = [
    f'# Accelerator check: {dev.get("device_kind", "?")} ({dev.get("backend")}, '
    f'{dev.get("device_count", "?")} device(s))',
    '',
    '; '.join(
      [payload['date'], f'host {payload["cpu"]}']
      + [', '.join(f'{k} {v}' for k, v in payload['packages'].items())] * bool(payload['packages'])
    )
    + '.',
    '',
    '| row | model | image | batch | precision | img/s (steady) | compile s | device peak MiB '
    '| host RSS MiB | command s |',
    '|---|---|---:|---:|---|---:|---:|---:|---:|---:|',
  ]
  for r in payload['rows']:
    if 'images_per_sec' not in r:  # the other rows, and failed ones, are sentences below
      continue
    lines.append(
      f'| {r["row"]} | {r["model"]} | {r["image_size"]} | {r["batch"]} | {r["precision"]} '
      f'| {_fmt(r["images_per_sec"])} | {_fmt(r["compile_seconds"], ".1f")} '
      f'| {_fmt(r["device_peak_mib"])} | {_fmt(r["host_peak_rss_mib"])} '
      f'| {_fmt(r["command_seconds"], ".1f")} |'
    )
  rows = {r['row']: r for r in payload['rows'] if 'error' not in r}
  base, det = rows.get('resnet50'), rows.get('resnet50 (deterministic)')
  if base and det and base.get('images_per_sec') and det.get('images_per_sec'):
    cost = det['images_per_sec'] / base['images_per_sec']
    lines += ['', f'Deterministic kernels ({DETERMINISTIC_FLAGS}): {cost:.2f}x the images/s.']
  d = rows.get('determinism')
  if d:
    lo = d['losses']
    lines += [
      '',
      f'SIGKILL after step {d["killed_after_step"]} of {d["steps"]} (checkpoints every '
      f'{d["checkpoint_every_steps"]}), resumed from step {d["resumed_from_step"]}, against the '
      f'uninterrupted run ({d["xla_flags"]}): fingerprints '
      f'{"equal" if d["fingerprints_equal"] else "DIFFER"} ({d["fingerprint_whole"][:12]} / '
      f'{d["fingerprint_resumed"][:12]}); losses identical at {lo["identical_steps"]} of '
      f'{lo["steps"]} steps (max |diff| {_fmt(lo["max_abs_diff"], ".3g")}).',
    ]
  e = rows.get('export')
  if e:
    lines += [
      '',
      f'Export ({e["format"]}, platforms {e["platforms"]}): max |logits - JAX| on this device '
      f'{e["max_abs_diff"]}; {e["bytes"] / 2**20:.1f} MiB; {e["command_seconds"]} s.',
    ]
  c = rows.get('compile')
  if c:
    lines += [
      '',
      f'Cold compile of the {c["model"]} train step (trace + lower + XLA, fresh processes): '
      f'trainer {c["trainer_seconds"]} s, bare jax.jit {c["bare_seconds"]} s: '
      f'{c["trainer_over_bare"]}x.',
    ]
  failed = [r for r in payload['rows'] if 'error' in r]
  for r in failed:
    lines += ['', f'{r["row"]}: FAILED: {r["error"]}']
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  root = args.workdirs or tempfile.mkdtemp(prefix='accelerator_check_')
  os.makedirs(root, exist_ok=True)
  runner = Runner(args, root)
  payload = {
    'date': time.strftime('%Y-%m-%d'),
    'device': probe_device(),
    'cpu': common.cpu_name(),
    'python': common.python_version(),
    'packages': packages(),
    'args': {k: v for k, v in vars(args).items()},
    'rows': [],
  }
  out = os.path.join(args.out_dir, 'accelerator_check.json')
  jobs = {
    'resnet50': lambda: runner.train_row('resnet50'),
    'deterministic': lambda: runner.train_row('resnet50', deterministic=True),
    'determinism': runner.determinism_row,
    'efficientnet': lambda: runner.train_row('efficientnet'),
    'unet': lambda: runner.train_row('unet'),
    'export': lambda: runner.export_row(os.path.join(root, 'resnet50')),
    'compile': runner.compile_row,
  }
  for key in args.rows:
    if key == 'export' and not os.path.exists(os.path.join(root, 'resnet50', 'summary.json')):
      payload['rows'].append({'row': 'export', 'error': 'needs the resnet50 row first'})
      continue
    try:
      row = jobs[key]()
    except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError) as e:
      row = {'row': key, 'error': str(e).strip().splitlines()[-1][:300] if str(e) else repr(e)}
    payload['rows'].append(row)
    print(json.dumps(row), flush=True)
    common.write_json(out, payload)
    common.write_text(os.path.splitext(out)[0] + '.md', table(payload) + '\n')
  print(table(payload), flush=True)
  return payload


if __name__ == '__main__':
  main()
