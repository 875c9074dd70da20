"""EfficientNet compound scaling (Tan & Le 2019, sec. 3.3): the alpha/beta/gamma grid and phi sweep.

  python main.py --config=configs/efficientnet_sweep.py --workdir=runs/efficientnet_sweep

A staged sweep (cnn_jax/recipes/sweep.py, logic in cnn_jax/recipes/scaling.py), every trial an
ordinary trainer
run of the same recipe in its own folder:
  stage 0  at phi = 1, every (alpha, beta, gamma) with values in {1.0, 1.1, 1.2, 1.3} and
           alpha * beta^2 * gamma^2 within 5% of 2: 10 candidates, 8 distinct networks (depth
           1.1, 1.2 and 1.3 round to the same 13 blocks), of which the 2 whose measured
           multiply-adds are also within 5% of 2x the base's train, once each: (1.0, 1.1, 1.3)
           at 1.9602x and (1.0, 1.2, 1.2) at 2.0181x (scaling.grid_table prints the grid);
  stage 1  the most accurate candidate's (alpha, beta, gamma) for phi = 0, 1, 2, against depth
           only, width only and resolution only, each matched to the compound net's measured
           multiply-adds at the same phi (phi = 0 is the base net, one trial for all four lines;
           the compound phi = 1 net is stage 0's winner: 8 new trials, 10 in all).
Writes runs/.../sweep.{csv,json,md} (alpha, beta, gamma, phi, params, MACs, validation and test
accuracy, wall time per trial) and sweep.png (validation accuracy against MACs, one line per
strategy).

The offline default (digits): the base (phi = 0) is B0's stage table at width 0.25 and depth 0.5
(10 MBConv blocks, 8-80 channels, 320 in the last 1x1 conv; 202,032 parameters) on 16x16 images
(268,320 multiply-adds); 300 steps of batch 64 (13 epochs) with AdamW 3e-3, the same for every
trial. Why so small: on the 2-core CPU, compiling a trial costs more than training it (the base
net: its init ~18 s and its train step ~31 s to compile, its 300 steps ~15 s), and compile time
grows with the block count, so depth 0.5 (10 blocks instead of 16) keeps it down. AdamW: the base
reached 95.3% test accuracy in 300 steps with AdamW 3e-3 against 88.1% with the offline SGD
recipe (shared 2-core CPU). Resolution here adds positions, not detail: the digits are 8x8 images
upsampled. The best candidate is picked on the validation split (a fixed 10% of the digits' train
split, 145 images, which no trial trains on); the test split only reports.

Measured: the whole command took 24.9 min (1,493 s: planning 68 s, 16 trials of 54-105 s at 300
steps) on the 2-core CPU machine on 2026-11-26, with test runs at nice 19 sharing the cores part of
the time; rerun with the validation split on 2026-12-07 (2-core AMD EPYC, at nice 10 under test
runs that took most of both cores): 45 min, planning 164 s, trials of 39-296 s, the same grid
winner; results in docs/recipes.md and experiments/results/efficientnet_sweep.*. Both runs, and
the estimate below, predate the measured-MACs rule of stage 0: they trained all 8 grid networks.

The estimate made before that run: about 30 minutes, from these measurements on the 2-core CPU
machine while another job kept it busy (load average 3-6, under `nice -n 19`; upper bounds):
  - a trial at 300 steps: the base net 79 s; depth alone x3.1 MACs (31 blocks) 170 s, width alone
    (0.5225) 101 s, resolution alone (32 px) 99 s: 487 s for these four in one process, startup
    and planning included;
  - the fixed part, from this sweep at 3 steps a trial (--config.num_train_steps=3
    --config.sweep.max_mult=1.2 --config.sweep.max_phi=1: 7 trials, 13.2 min): 63-94 s a trial
    for 10-13 blocks, 126 s for 23 blocks; planning (tracing each net for its MACs and matching
    the one-dimension nets, once as a dry run before training) 1-2 min;
  - so: stage 0, 8 trials of 10-13 blocks at ~100 s = ~13 min; stage 1, 8 trials (the base 79 s,
    compound phi = 2 and five one-dimension nets ~100 s each, depth alone at phi = 2 ~170 s)
    = ~15 min; with planning ~30 min, ~35 at the heavier load of the 3-step run. An idle machine
    is faster (compiling, most of each trial, is single-threaded and got under a core here).
  - Knobs: --config.sweep.max_phi (K), --config.sweep.max_mult / tolerance (candidates),
    --config.num_train_steps.

Variants :cifar10 and :imagenet2012 scale true B0 (width 1, depth 1) at 32 and 224 pixels with
configs/efficientnet.py's recipe for that dataset; the paper's grid step is finer:
--config.sweep.grid_step=0.05. Under stage 0's measured-MACs rule neither has a candidate within
5% of 2: B0's 16 blocks round to 23 at any depth from 1.05 to 1.25, and at 32 px any larger input
adds a pixel to every feature map (33 px: 17, 9, 5, 3, 2 against 16, 8, 4, 2, 1). Closest: at
224 px (1.0, 1.1, 1.3) at 2.1431x (grid step 0.1 and 0.05); at 32 px (1.2, 1.3, 1.0) at 2.5367x
(step 0.1), (1.25, 1.25, 1.0) at 2.4109x (step 0.05). So the variants widen the tolerance:
:imagenet2012 to 10% (2 of 12 networks at step 0.1), :cifar10 to 20% (3 of 24 networks, all
at 32 px: resolution steps are too coarse there, 35 px already measures 2.4x the base).
"""

import ml_collections

from configs import efficientnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = efficientnet.get_config(arg)  # the recipe of each variant
  config.model.name = 'efficientnet_scaled'  # B0's table at any width/depth (not the B0-B7 table)
  config.model.width_mult = 1.0
  config.model.depth_mult = 1.0
  if config.dataset == 'digits':
    config.model.width_mult = 0.25
    config.model.depth_mult = 0.5
    config.image_size = 16
    config.batch_size = 64
    config.num_train_steps = 300
    config.optimizer.name = 'adamw'
    config.optimizer.lr = 3e-3
    config.optimizer.weight_decay = 1e-4
    config.eval_every_steps = -1  # the end only: one eval compile per trial, not two
    config.checkpoint_every_steps = 100

  sweep = config.sweep = ml_collections.ConfigDict()
  sweep.target = 2.0  # alpha * beta^2 * gamma^2: each phi about doubles the multiply-adds
  sweep.grid_step = 0.1
  sweep.max_mult = 1.3  # alpha, beta, gamma in {1, 1 + grid_step, ..., max_mult}
  sweep.tolerance = 0.05  # |alpha * beta^2 * gamma^2 / target - 1| at most this
  if config.dataset == 'imagenet2012':
    sweep.tolerance = 0.1  # measured MACs: nothing within 5% once B0 is rounded (docstring)
  elif config.dataset == 'cifar10':
    sweep.tolerance = 0.2  # 32 px: resolution steps are coarse (docstring)
  sweep.max_phi = 2  # K: stage 1 scales by phi = 0..K
  sweep.plot_x = 'macs'
  sweep.plot_y = 'validation_accuracy'
  sweep.plot_group = 'strategy'
  sweep.plot_stage = -1  # stage 1
  sweep.plot_logx = True
  return config


def get_trials(config: ml_collections.ConfigDict):
  from cnn_jax.recipes import scaling

  return scaling.grid_trials(config)


def get_next_trials(config: ml_collections.ConfigDict, stage: int, rows: list[dict]):
  from cnn_jax.recipes import scaling

  return scaling.get_next_trials(config, stage, rows)
