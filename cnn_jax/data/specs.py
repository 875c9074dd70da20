"""What each dataset is: where tfds keeps it, its classes, statistics and augmentation, its task.

A DatasetSpec says how a dataset is read and preprocessed; DATASETS holds the known ones by name
(datasets.load opens them, pipeline.py preprocesses them as their spec and task say).
"""

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How a dataset is read and preprocessed."""

  tfds_name: str
  train_split: str  # tfds split names, slices allowed ('train[:99%]')
  test_split: str  # read once, at the end of a run (config.eval_split='validation')
  mean: tuple[float, ...]  # per channel, of images scaled to [0, 1]
  std: tuple[float, ...]
  # 'shift' | 'crop_flip' | 'inception_crop_flip'; segmentation: 'scale_crop' | 'none' (augment.py)
  train_augment: str
  eval_resize: str  # 'resize' | 'center_crop'
  num_classes: int = 0  # known without opening the data (0: read it from the data)
  how_to_prepare: str = ''
  # Segmentation only (task='segmentation'): batches carry a per-pixel label map.
  # Detection (task='detection'): batches carry up to max_boxes boxes and classes per image.
  task: str = 'classification'  # | 'segmentation' | 'detection'
  mask_feature: str = ''  # the tfds feature holding the label map (an encoded 1-channel image)
  # Stored mask value v -> label label_map[v]; values past the table -> ignore_label.
  # Empty: v itself for v < num_classes, ignore_label above.
  label_map: tuple[int, ...] = ()
  ignore_label: int = 255  # pixels no loss or metric counts
  flip: bool = True  # 'scale_crop' mirrors left-right (never for digits: another symbol)
  scale_range: tuple[float, float] = (0.5, 2.0)  # 'scale_crop' random rescale (DeepLab's range)
  # RandAugment (classification training, optional; randaugment.py): the value of pixels that
  # its geometric ops bring in, in [0, 1] (0.5 grey; 0.0 on a black background), and its largest
  # translation as a fraction of the side: AutoAugment's ImageNet range 150 px at 331 px by
  # default, its CIFAR range 10 px at 32 px for small images.
  fill: float = 0.5
  max_translate: float = 150 / 331
  # Detection only: how a record's objects are stored ('digit_scenes': digit_boxes (top, left,
  # side) in pixels of the 64 px canvas and digit_labels, -1 unused; 'tfds_objects': tfds's
  # objects/bbox (y_min, x_min, y_max, x_max) in [0, 1] and objects/label, as in 'voc'), and how
  # many boxes a batch row holds (images with more keep the first max_boxes).
  boxes_format: str = ''
  max_boxes: int = 0
  # The validation split: a tfds split of its own, or ('') a deterministic part of the train
  # split that training never sees: validation_fraction of each class (stratified on 'label'
  # where records have one, else of the whole split), drawn once from a fixed seed, the same for
  # every run and config.seed (datasets.hold_out).
  validation_split: str = ''
  validation_fraction: float = 0.1

  @property
  def segmentation(self) -> bool:
    return self.task == 'segmentation'

  @property
  def detection(self) -> bool:
    return self.task == 'detection'


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CIFAR_TRANSLATE = 10 / 32  # AutoAugment's CIFAR range: 10 px at 32 px
# What prepares a tfds dataset in array_record format (cnn_jax/data/prepare.py: tfds build's work
# through tfds's Python API, since the `tfds` command needs apache_beam).
TFDS_BUILD = 'python -m cnn_jax.data.prepare {name} --data_dir={data_dir}'

DATASETS: dict[str, DatasetSpec] = {
  # Built here from scikit-learn's copy; mean/std of the 8x8 pixels scaled to [0, 1].
  # White digits on black: RandAugment fills with black, and translates by small-image amounts.
  'digits': DatasetSpec(
    'digits',
    'train',
    'test',
    (0.3053,),
    (0.3760,),
    'shift',
    'resize',
    10,
    fill=0.0,
    max_translate=_CIFAR_TRANSLATE,
  ),
  'mnist': DatasetSpec(
    'mnist',
    'train',
    'test',
    (0.1307,),
    (0.3081,),
    'shift',
    'resize',
    10,
    how_to_prepare=TFDS_BUILD,
    fill=0.0,
    max_translate=_CIFAR_TRANSLATE,
  ),
  'cifar10': DatasetSpec(
    'cifar10',
    'train',
    'test',
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
    'crop_flip',
    'resize',
    10,
    how_to_prepare=TFDS_BUILD,
    max_translate=_CIFAR_TRANSLATE,
  ),
  'cifar100': DatasetSpec(
    'cifar100',
    'train',
    'test',
    (0.5071, 0.4865, 0.4409),
    (0.2673, 0.2564, 0.2762),
    'crop_flip',
    'resize',
    100,
    how_to_prepare=TFDS_BUILD,
    max_translate=_CIFAR_TRANSLATE,
  ),
  # Validation: the last 1% of tfds's train split (12,811 images), big_vision's "minival":
  # tfds shuffles the split when it builds it, so a slice is nearly stratified, and 1.28 M labels
  # are not read at every start. Test: the official 50,000 validation images.
  'imagenet2012': DatasetSpec(
    'imagenet2012',
    'train[:99%]',
    'validation',
    _IMAGENET_MEAN,
    _IMAGENET_STD,
    'inception_crop_flip',
    'center_crop',
    1000,
    how_to_prepare='put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in '
    '{data_dir}/downloads/manual, then run: ' + TFDS_BUILD,
    validation_split='train[99%:]',
  ),
  # Segmentation. Built here (digit_scenes.py): background + 10 digit classes on a 64x64 canvas,
  # 94% of the pixels background, about 0.6% each digit class; mean/std of its train images
  # scaled to [0, 1]. Rescaled by 0.75-1.25 (digits of 12-30 px), never mirrored.
  'digit_scenes': DatasetSpec(
    'digit_scenes',
    'train',
    'test',
    (0.0813,),
    (0.1837,),
    'scale_crop',
    'resize',
    11,
    task='segmentation',
    mask_feature='segmentation_mask',
    flip=False,
    scale_range=(0.75, 1.25),
  ),
  # Detection on the same scenes (digit_scenes.py): each digit's box and class (10 classes, no
  # background class), up to 3 per image. Resized only: no augmentation moves the boxes.
  'digit_boxes': DatasetSpec(
    'digit_scenes',
    'train',
    'test',
    (0.0813,),
    (0.1837,),
    'none',
    'resize',
    10,
    task='detection',
    flip=False,
    boxes_format='digit_scenes',
    max_boxes=3,
  ),
  # PASCAL VOC 2007 detection (tfds 'voc/2007': train 2,501 / validation 2,510 / test 4,952
  # images, 20 classes). 'Difficult' objects (objects/is_difficult) are trained on like the others
  # and reach the eval batches as a flag, for the devkit's mAP (neither counted nor penalised).
  # Images hold at most 42 objects. VOC's own val split chooses, so train alone trains (the
  # papers train their final models on train+val).
  'voc': DatasetSpec(
    'voc/2007',
    'train',
    'test',
    _IMAGENET_MEAN,
    _IMAGENET_STD,
    'none',
    'resize',
    20,
    how_to_prepare=TFDS_BUILD,
    task='detection',
    boxes_format='tfds_objects',
    max_boxes=42,
    validation_split='validation',
  ),
  # Trimaps stored 1 = pet, 2 = background, 3 = border (unsure): background 0, pet 1, and the
  # border ignored (255), the usual practice (its pixels are neither, by the annotators' own mark).
  # 3,680 trainval / 3,669 test images of varying size.
  'oxford_iiit_pet': DatasetSpec(
    'oxford_iiit_pet',
    'train',
    'test',
    _IMAGENET_MEAN,
    _IMAGENET_STD,
    'scale_crop',
    'resize',
    2,
    how_to_prepare=TFDS_BUILD,
    task='segmentation',
    mask_feature='segmentation_mask',
    label_map=(255, 1, 0, 255),
  ),
}

# Names people ask for that tfds has no segmentation builder for (tfds 4.9): a clear answer
# instead of "unknown dataset".
UNAVAILABLE = {
  'voc_segmentation': "tfds's 'voc' (2007, 2012) holds detection boxes only, no segmentation "
  "masks (no tfds builder has SegmentationClass); use 'voc' for detection, digit_scenes or "
  'oxford_iiit_pet for segmentation',
}


def object_rows(spec: DatasetSpec, record: dict[str, Any]) -> np.ndarray:
  """A detection record's objects as (spec.max_boxes, 5) float32 rows (y_min, x_min, y_max,
  x_max, class), boxes as fractions of the image, class -1 (and a zero box) for unused rows."""
  rows = np.zeros((spec.max_boxes, 5), np.float32)
  rows[:, 4] = -1
  if spec.boxes_format == 'digit_scenes':
    from cnn_jax.data.digit_scenes import SIZE

    boxes = np.asarray(record['digit_boxes'], np.float32).reshape(-1, 3)
    classes = np.asarray(record['digit_labels']).reshape(-1)
    used = classes >= 0
    top, left, side = boxes[used].T / SIZE
    found = np.stack([top, left, top + side, left + side, classes[used]], -1)
  elif spec.boxes_format == 'tfds_objects':
    objects = record['objects']
    bbox = np.asarray(objects['bbox'], np.float32).reshape(-1, 4)
    found = np.concatenate([bbox, np.asarray(objects['label'], np.float32).reshape(-1, 1)], -1)
  else:
    raise ValueError(f'unknown boxes_format {spec.boxes_format!r}')
  found = found[: spec.max_boxes]
  rows[: len(found)] = found
  return rows


FOLDER_SPEC = DatasetSpec(
  'image_folder',
  'train',
  'test',
  _IMAGENET_MEAN,
  _IMAGENET_STD,
  'inception_crop_flip',
  'center_crop',
)
