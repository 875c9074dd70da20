"""One-shot learning with a Siamese encoder and the triplet loss (notes 004). Offline default:
learn on digits 0-5, recognise and verify digits 6-9 from one example each, no download.

  python main.py --config=configs/triplet.py --workdir=runs/triplet_digits
  --config.triplet.mining=hard            batch-hard mining (Hermans et al. 2017); or 'all'
  --config.triplet.margin=0.5             the notes' alpha (embeddings are on the unit sphere)
  --config.triplet.p=2                    P x K batches: P classes x K = batch_size / P images
  --config.triplet.sampler=shuffle        random batches (permuted epochs) instead of P x K

The encoder f(x) is a ResNet-20's pooled features and a linear layer to a 64-d embedding on the
unit sphere; the loss is the in-batch triplet loss max(d(A,P) - d(A,N) + alpha, 0) with squared
distances over the triplets the mining picks in each batch. Each training batch holds P = 4 of
the 6 training classes x K = 32 images (Hermans et al. 2017), K / devices of each class on every
device. Evaluation (summary.json) uses the test images only: the distance threshold that best
separates same/different pairs of the training classes (test_seen_verification_accuracy,
test_threshold), then on the held-out classes, with one reference image per class drawn 20 times:
test_one_shot_accuracy (the nearest reference has the query's class; chance 1/4 for 4 classes)
and test_verification_accuracy (d <= threshold iff same class, over all query-reference pairs),
true and false accept rates.
"""

import ml_collections

from configs import default


def add_triplet_fields(config: ml_collections.ConfigDict) -> None:
  """The options of the metric-learning task (cnn_jax/tasks/: Triplet)."""
  config.task = 'triplet'
  t = config.triplet = ml_collections.ConfigDict()
  t.margin = 0.2  # the notes' alpha (FaceNet's 0.2 for unit-norm embeddings)
  # 'all' | 'hard' (batch hard) | 'semi-hard' (FaceNet). On the offline default, from scratch,
  # 'hard' collapsed the embedding (every distance near 0, the loss stuck near the margin) and
  # 'semi-hard' transferred worse to the held-out classes than 'all' (README).
  t.mining = 'all'
  t.squared = True  # squared Euclidean distances, as in the notes
  t.trials = 20  # draws of the one reference image per held-out class
  # 'pk': each batch is P classes x K images (Hermans et al. 2017), so that every anchor has
  # positives and negatives whatever the number of classes, which 'hard' and 'semi-hard' mining
  # need (random batches over many classes hold almost no positives); 'shuffle': the permuted
  # epochs of every other task (the sampler before issue 24).
  t.sampler = 'pk'
  t.p = 4  # classes per batch
  # images per class: batch_size = P * K, so K follows --config.batch_size and --config.triplet.p
  # (set it with the batch size to override).
  t.k = config.get_ref('batch_size') // t.get_ref('p')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  add_triplet_fields(config)
  config.model.name = 'encoder'
  config.model.backbone = 'resnet20'
  config.model.embedding_dim = 64
  if arg not in (None, '', 'digits'):
    raise ValueError(f"unknown variant '{arg}'; use '' (digits)")
  config.data_classes = (0, 1, 2, 3, 4, 5)
  config.held_out_classes = (6, 7, 8, 9)
  default.set_offline_recipe(config, num_epochs=15.0)
  config.label_smoothing = 0.0
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 1e-3
  config.eval_every_steps = config.checkpoint_every_steps = 50
  return config
