"""The tfds fixtures of tfds_fixtures.py: real builders' output in `tfds build` array_record
layout, readable with `as_data_source`, with each dataset's conventions (shapes, labels, boxes,
masks, ImageNet's CMYK/PNG/grey pictures) and split slicing."""

import functools
import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tfds_fixtures
from PIL import Image

SKIP = tfds.decode.SkipDecoding()


@functools.cache
def _examples(data_dir: str, name: str, split: str, raw: tuple[str, ...] = ()) -> tuple:
  """All examples of `split`, in order; the features named in `raw` left encoded (bytes)."""
  builder = tfds.builder(name, data_dir=data_dir)
  source = builder.as_data_source(split, decoders={k: SKIP for k in raw} or None)
  return tuple(source.__getitems__(list(range(len(source)))))


def _all(data_dir: str, name: str, raw: tuple[str, ...] = ()) -> list[dict]:
  return [
    ex for split in tfds_fixtures.SPLITS[name] for ex in _examples(data_dir, name, split, raw)
  ]


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize('name', tfds_fixtures.DATASETS)
def test_prepared_in_tfds_build_layout(tfds_dir, name):
  builder = tfds.builder(name, data_dir=tfds_dir)
  assert builder.is_prepared()
  assert builder.version == builder.canonical_version  # the version `tfds build` makes
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  folder = os.path.join(tfds_dir, name, str(builder.version))
  assert os.path.samefile(builder.data_dir, folder)
  files = set(os.listdir(folder))
  assert {'dataset_info.json', 'features.json'} <= files
  shards = set()
  for split, info in builder.info.splits.items():
    count = len(info.shard_lengths)
    shards |= {f'{builder.name}-{split}.array_record-{i:05d}-of-{count:05d}' for i in range(count)}
  assert shards <= files
  assert not [f for f in files - shards if 'array_record' in f or 'incomplete' in f]


@pytest.mark.parametrize('name', tfds_fixtures.DATASETS)
def test_splits_and_counts(tfds_dir, name):
  builder = tfds.builder(name, data_dir=tfds_dir)
  expected = tfds_fixtures.SPLITS[name]
  assert set(builder.info.splits) == set(expected)
  for split, count in expected.items():
    assert builder.info.splits[split].num_examples == count
    assert len(builder.as_data_source(split)) == count
    assert len(_examples(tfds_dir, name, split)) == count


@pytest.mark.parametrize('name', tfds_fixtures.DATASETS)
def test_images_are_varied_uint8_rgb(tfds_dir, name):
  channels = 1 if name == 'mnist' else 3
  images = [ex['image'] for ex in _all(tfds_dir, name)]
  for image in images:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == channels
    assert image.min() < image.max()  # not one colour
  assert len({image.tobytes() for image in images}) == len(images)  # all different
  if name in ('mnist', 'cifar10', 'cifar100'):
    assert {image.shape[:2] for image in images} == {(28, 28) if name == 'mnist' else (32, 32)}
  else:
    assert len({image.shape[:2] for image in images}) >= 3  # varied sizes


def test_mnist(tfds_dir):
  builder = tfds.builder('mnist', data_dir=tfds_dir)
  assert builder.info.features['label'].num_classes == 10
  for split, count in tfds_fixtures.SPLITS['mnist'].items():
    labels = sorted(ex['label'] for ex in _examples(tfds_dir, 'mnist', split))
    assert labels == sorted(i % 10 for i in range(count))  # written in tfds's shuffled order


def test_cifar10(tfds_dir):
  label = tfds.builder('cifar10', data_dir=tfds_dir).info.features['label']
  assert label.num_classes == 10 and label.names[:3] == ['airplane', 'automobile', 'bird']
  train = _examples(tfds_dir, 'cifar10', 'train')
  assert sorted({ex['label'] for ex in train}) == list(range(10))
  assert {_text(ex['id']) for ex in train} == {f'train_{i:05d}' for i in range(len(train))}
  assert all(0 <= ex['label'] < 10 for ex in _all(tfds_dir, 'cifar10'))


def test_cifar100(tfds_dir):
  features = tfds.builder('cifar100', data_dir=tfds_dir).info.features
  assert features['label'].num_classes == 100 and features['coarse_label'].num_classes == 20
  assert features['label'].names[:2] == ['apple', 'aquarium_fish']
  coarse_of = {}
  for ex in _all(tfds_dir, 'cifar100'):
    assert 0 <= ex['label'] < 100 and 0 <= ex['coarse_label'] < 20
    assert coarse_of.setdefault(ex['label'], ex['coarse_label']) == ex['coarse_label']
  assert len({ex['label'] for ex in _examples(tfds_dir, 'cifar100', 'train')}) == 10
  assert coarse_of[0] == features['coarse_label'].str2int('fruit_and_vegetables')  # apple


def test_imagenet2012(tfds_dir):
  label = tfds.builder('imagenet2012', data_dir=tfds_dir).info.features['label']
  assert label.num_classes == 1000
  train = _examples(tfds_dir, 'imagenet2012', 'train')
  for ex in train:  # the label is the synset of the per-class tar
    assert label.int2str(ex['label']) == _text(ex['file_name']).split('_')[0]
  assert len({ex['label'] for ex in train}) == 12
  # Validation labels: the k-th of the builder's bundled list for the k-th file.
  with open(tfds.core.tfds_path('datasets/imagenet2012/validation_labels.txt')) as f:
    bundled = f.read().split()
  validation = _examples(tfds_dir, 'imagenet2012', 'validation')
  assert {_text(ex['file_name']): label.int2str(ex['label']) for ex in validation} == {
    f'ILSVRC2012_val_{k:08d}.JPEG': bundled[k - 1] for k in range(1, 11)
  }


def test_imagenet2012_fixed_and_grey_pictures(tfds_dir):
  raw = _all(tfds_dir, 'imagenet2012', raw=('image',))
  decoded = _all(tfds_dir, 'imagenet2012')
  modes = {}
  for ex, image in zip(raw, decoded, strict=True):
    with Image.open(io.BytesIO(ex['image'])) as picture:
      assert picture.format == 'JPEG'  # the PNG was converted too
      assert picture.size == image['image'].shape[1::-1]
      modes[_text(ex['file_name'])] = picture.mode
  fixed = tfds_fixtures.IMAGENET_CMYK + tfds_fixtures.IMAGENET_PNG
  assert {modes[name] for name in fixed} == {'RGB'}  # CMYK and PNG sources re-encoded as RGB
  assert {name for name, mode in modes.items() if mode == 'L'} == set(tfds_fixtures.IMAGENET_GREY)
  assert set(modes.values()) == {'RGB', 'L'}
  for ex in decoded:  # grey JPEGs are stored grey; the feature decodes them to 3 equal channels
    if _text(ex['file_name']) in tfds_fixtures.IMAGENET_GREY:
      image = ex['image']
      assert image.shape[-1] == 3 and (image == image[..., :1]).all()


def test_oxford_iiit_pet(tfds_dir):
  features = tfds.builder('oxford_iiit_pet', data_dir=tfds_dir).info.features
  assert features['label'].num_classes == 37 and features['species'].names == ['Cat', 'Dog']
  examples = _all(tfds_dir, 'oxford_iiit_pet')
  values = set()
  for ex in examples:
    image, mask, name = ex['image'], ex['segmentation_mask'], _text(ex['file_name'])
    assert mask.dtype == np.uint8 and mask.shape == image.shape[:2] + (1,)
    values |= set(np.unique(mask).tolist())
    breed = name[: -len('.jpg')].rsplit('_', 1)[0]
    assert features['label'].int2str(ex['label']) == breed
    assert ex['species'] == (0 if breed[0].isupper() else 1)
    box = ex['head_bbox']
    assert box.shape == (4,) and 0 <= box.min() and box.max() <= 1
    assert box[0] <= box[2] and box[1] <= box[3]
  assert values == {1, 2, 3}
  assert {ex['species'] for ex in examples} == {0, 1}
  assert len({ex['label'] for ex in examples}) == 10
  by_name = {_text(ex['file_name']): ex for ex in examples}
  assert not by_name[tfds_fixtures.PET_NO_XML + '.jpg']['head_bbox'].any()  # no head box
  test = _examples(tfds_dir, 'oxford_iiit_pet', 'test')
  assert not any(ex['head_bbox'].any() for ex in test)  # test pictures have no head box
  for ex in _all(tfds_dir, 'oxford_iiit_pet', raw=('image',)):  # all stored as JPEG
    with Image.open(io.BytesIO(ex['image'])) as picture:
      assert picture.format == 'JPEG' and picture.mode in ('RGB', 'L')
      grey = _text(ex['file_name'])[:-4] in (
        tfds_fixtures.PET_GREY_JPEG,
        tfds_fixtures.PET_GREY_PNG,
      )
      assert (picture.mode == 'L') == grey


def test_voc2007(tfds_dir):
  features = tfds.builder('voc/2007', data_dir=tfds_dir).info.features
  assert features['objects']['label'].num_classes == 20
  examples = _all(tfds_dir, 'voc/2007')
  difficult, truncated, labels, counts = set(), set(), set(), []
  for ex in examples:
    objects = ex['objects']
    boxes = np.asarray(objects['bbox'], np.float32).reshape(-1, 4)
    counts.append(len(boxes))
    assert len(boxes) >= 1 and 0 <= boxes.min() and boxes.max() <= 1
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
    height, width = ex['image'].shape[:2]
    object_labels = np.asarray(objects['label'])
    assert ((0 <= object_labels) & (object_labels < 20)).all()
    assert len(objects['is_difficult']) == len(objects['is_truncated']) == len(boxes)
    difficult |= {bool(d) for d in objects['is_difficult']}
    truncated |= {bool(t) for t in objects['is_truncated']}
    labels |= set(object_labels.tolist())
    assert sorted(ex['labels']) == sorted(set(object_labels.tolist()))
    # A truncated object's box touches the right edge (1-based VOC pixels -> xmax = 1.0).
    for box, is_truncated in zip(boxes, objects['is_truncated'], strict=True):
      assert box[3] == 1.0 or not is_truncated
      assert box[1] * width >= 1 - 1e-4 and box[0] * height >= 1 - 1e-4  # 1-based xmin, ymin
  assert difficult == {True, False} and truncated == {True, False}
  assert labels == set(range(20))
  assert max(counts) >= 5 and min(counts) == 1


@pytest.mark.parametrize('name', tfds_fixtures.DATASETS)
def test_slices_partition_the_split(tfds_dir, name):
  """`train[:90%]` + `train[90%:]` (and, for ImageNet, big_vision's minival `train[99%:]`) are
  disjoint parts that add up to the split, in order."""
  builder = tfds.builder(name, data_dir=tfds_dir)
  train = [ex['image'] for ex in _examples(tfds_dir, name, 'train', raw=('image',))]
  cuts = [90, 99] if name == 'imagenet2012' else [90]
  for cut in cuts:
    parts = []
    for spec in (f'train[:{cut}%]', f'train[{cut}%:]'):
      source = tfds.builder(name, data_dir=tfds_dir).as_data_source(spec, decoders={'image': SKIP})
      assert len(source) > 0, spec
      parts.append([source[i]['image'] for i in range(len(source))])
    assert parts[0] + parts[1] == train
    assert not set(parts[0]) & set(parts[1])
  assert builder.info.splits['train[90%:]'].num_examples == len(train) - round(0.9 * len(train))
