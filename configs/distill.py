"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a registry student learns from a teacher.

  python main.py --config=configs/distill.py --workdir=runs/distill_lenet5

Loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)
(cnn_jax/tasks/: distillation_loss). The teacher is a whole config (`config.teacher`, any field
overridable: --config.teacher.model.name=resnet32) and its checkpoint in
`config.distill.teacher_workdir` (default <workdir>/teacher). With `train_teacher=True` (the
default) a teacher that has not finished training (no summary.json there) is trained first, by
the same trainer, then the student; rerunning the command resumes whichever was interrupted.
The teacher runs in eval mode inside the jitted step on the student's augmented images; it is
never updated and never saved in the student's checkpoints. Train metrics: the student's
accuracy, the teacher's, their agreement and the KL term; summary.json adds the teacher's test
accuracy.

Offline default: teacher ResNet-20 (configs/resnet.py: 10 epochs), student LeNet-5
(configs/lenet5.py: 30 epochs, AdamW) on digits, alpha 0.9, T 4 (values common in the
literature since Hinton et al.'s MNIST experiments used T in 2..20). Compare with the student
from scratch: python main.py --config=configs/lenet5.py.

Variants: --config=configs/distill.py:cifar10 (teacher ResNet-56, student ResNet-20, He et al.'s
CIFAR recipe for both).
"""

import ml_collections

from configs import lenet5, resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg in (None, '', 'digits'):
    config = lenet5.get_config()
    config.teacher = resnet.get_config()
  elif arg == 'cifar10':
    config = resnet.get_config('cifar10')  # ResNet-20 student
    config.teacher = resnet.get_config('cifar10')
    config.teacher.model.name = 'resnet56'
  else:
    raise ValueError(f"unknown variant '{arg}'; use '' (digits) or 'cifar10'")
  config.task = 'distillation'
  config.distill = ml_collections.ConfigDict()
  config.distill.alpha = 0.9  # weight of the soft (teacher) term
  config.distill.temperature = 4.0
  config.distill.teacher_workdir = ''  # '' = <workdir>/teacher
  config.distill.train_teacher = True  # train the teacher first where it has not finished
  return config
