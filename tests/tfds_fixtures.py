"""Tiny tfds datasets in the exact on-disk format of `tfds build <name> --file_format=array_record`.

What is real: the dataset builder (`tfds.builder(name)`, i.e. tfds's own `MNIST`, `Cifar10`,
`Cifar100`, imagenet2012 `Builder`, oxford_iiit_pet `Builder` and `Voc` classes, at the version
the installed tfds builds), its `_split_generators` and `_generate_examples` (with their image
fixes: CMYK and PNG conversion for ImageNet, re-encoding of the "corrupt" pet images), tfds's
archive extraction, its writer and the array_record format. The result is what a user's
`tfds build` gives: `<data_dir>/<name>[/<config>]/<version>/` with `dataset_info.json`,
`features.json` and `<name>-<split>.array_record-0000X-of-0000Y` shards.

What is generated: only the source files a builder would download (or find in its manual
folder), in the format and layout it expects (IDX gz files, CIFAR binary batches, ImageNet's
tar of per-class tars, the pets and VOC archives) but with tens of small, deterministic pictures
(gradients, rectangles and discs drawn from a seeded numpy RNG, encoded by PIL). The download is
redirected by patching `tfds.download.DownloadManager.download` (URL -> local archive, by file
name; an unknown URL raises, nothing touches the network) and `download_and_extract`
(= the real `extract` of that local archive). ImageNet needs no patch: its archives go in the
`manual_dir` of the `DownloadConfig`, as for a user. MNIST hardcodes its example counts
(`_TRAIN_EXAMPLES`, `_TEST_EXAMPLES`); those module constants are patched during its build, as
tfds's own tests do.

`SPLITS` gives the number of examples per split of each dataset; each `_write_*` function says
what its dataset holds. `prepare` builds one dataset (a no-op if already prepared), `prepare_all`
all six and `prepare_all_once` does so once for several processes (pytest-xdist workers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import io
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

DATASETS = ('mnist', 'cifar10', 'cifar100', 'imagenet2012', 'oxford_iiit_pet', 'voc/2007')

# Examples per split of each prepared dataset.
SPLITS = {
  'mnist': {'train': 40, 'test': 20},
  'cifar10': {'train': 40, 'test': 20},
  'cifar100': {'train': 40, 'test': 20},
  'imagenet2012': {'train': 60, 'validation': 10},
  'oxford_iiit_pet': {'train': 30, 'test': 12},
  'voc/2007': {'train': 12, 'validation': 8, 'test': 10},
}


@dataclasses.dataclass
class _Sources:
  """What a dataset's build needs besides the builder.

  files: download file name (the URL's last part) -> the generated local file.
  manual_dir: the folder for `DownloadConfig(manual_dir=...)`, if the builder reads one.
  constants: module constants of the builder to patch during the build (name -> value).
  """

  files: dict[str, str] = dataclasses.field(default_factory=dict)
  manual_dir: str | None = None
  constants: dict[str, object] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Pictures and archives.


def _rng(*key: int | str) -> np.random.Generator:
  """A numpy RNG seeded from `key` (strings by their bytes), so every file is deterministic."""
  seed = [b for part in key for b in (part.encode() if isinstance(part, str) else [part])]
  return np.random.default_rng(seed)


def _picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """An RGB uint8 picture: a diagonal two-colour gradient with 2 to 4 rectangles and discs."""
  y, x = np.mgrid[0:height, 0:width]
  t = (y / max(height - 1, 1) + x / max(width - 1, 1))[..., None] / 2
  c0, c1 = rng.integers(0, 256, (2, 3))
  image = c0 * (1 - t) + c1 * t
  for _ in range(rng.integers(2, 5)):
    colour = rng.integers(0, 256, 3)
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    ry, rx = rng.integers(2, max(3, height // 3)), rng.integers(2, max(3, width // 3))
    if rng.random() < 0.5:
      inside = (abs(y - cy) <= ry) & (abs(x - cx) <= rx)
    else:
      inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    image[inside] = colour
  return image.astype(np.uint8)


def _encode(array: np.ndarray, fmt: str = 'JPEG', mode: str = 'RGB') -> bytes:
  """`array` encoded by PIL as `fmt` ('JPEG' or 'PNG') after conversion to `mode`."""
  buffer = io.BytesIO()
  image = Image.fromarray(array).convert(mode)
  image.save(buffer, fmt, **({'quality': 90} if fmt == 'JPEG' else {}))
  return buffer.getvalue()


def _tar(path_or_file, members: dict[str, bytes], mode: str = 'w'):
  """Writes a tar (`mode` 'w:gz' for .tar.gz) of `members` (name -> bytes) in this order into
  `path_or_file` (a path or a binary file object), and returns that."""
  kwargs = {'fileobj': path_or_file} if isinstance(path_or_file, io.IOBase) else {}
  with tarfile.open(None if kwargs else path_or_file, mode, **kwargs) as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size, info.mtime, info.mode = len(data), 1_262_304_000, 0o644
      tar.addfile(info, io.BytesIO(data))
  return path_or_file


# ---------------------------------------------------------------------------------------------
# The source files of each dataset.


def _write_mnist(builder: tfds.core.DatasetBuilder, src: str) -> _Sources:
  """MNIST: the four IDX files, gzipped, as on the CVDF mirror.

  train: 40, test: 20 grey 28x28 digits-like pictures (2 to 4 bright strokes on black);
  labels cycle 0..9 in both splits. `_TRAIN_EXAMPLES` / `_TEST_EXAMPLES` are patched to 40 / 20.
  """
  del builder
  sources = _Sources(constants={'_TRAIN_EXAMPLES': 40, '_TEST_EXAMPLES': 20})
  for split, prefix in (('train', 'train'), ('test', 't10k')):
    count = SPLITS['mnist'][split]
    images = np.zeros((count, 28, 28), np.uint8)
    for i in range(count):
      rng = _rng('mnist', split, i)
      for _ in range(rng.integers(2, 5)):  # strokes: 3x3 dots along a segment
        (y0, x0), (y1, x1) = rng.integers(5, 23, (2, 2))
        for t in np.linspace(0, 1, 24):
          y, x = round(y0 + t * (y1 - y0)), round(x0 + t * (x1 - x0))
          images[i, y - 1 : y + 2, x - 1 : x + 2] = rng.integers(160, 256)
    labels = (np.arange(count) % 10).astype(np.uint8)
    idx = {f'{prefix}-images-idx3-ubyte.gz': images, f'{prefix}-labels-idx1-ubyte.gz': labels}
    for name, array in idx.items():
      # IDX: magic 0x0800 + number of dimensions, the dimensions (big-endian int32), the bytes.
      data = np.array([0x800 + array.ndim, *array.shape], '>u4').tobytes() + array.tobytes()
      path = os.path.join(src, name)
      with open(path, 'wb') as f:
        f.write(gzip.compress(data, mtime=0))
      sources.files[name] = path
  return sources


_CIFAR10_NAMES = 'airplane automobile bird cat deer dog frog horse ship truck'.split()
_CIFAR100_COARSE = """aquatic_mammals fish flowers food_containers fruit_and_vegetables
  household_electrical_devices household_furniture insects large_carnivores
  large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores
  medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1
  vehicles_2""".split()
_CIFAR100_FINE = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
  bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach
  couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house
  kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
  mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
  plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew
  skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank
  telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf
  woman worm""".split()
# The superclass (coarse label) of each CIFAR-100 class, as in the real data.
_CIFAR100_FINE_TO_COARSE = (
  (4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11)
  + (6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5)
  + (5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17)
  + (10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13)
  + (16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)
)


def _cifar_record(labels: tuple[int, ...], image: np.ndarray) -> bytes:
  """One CIFAR binary record: the label byte(s), then the 32x32 R, G and B planes."""
  return bytes(labels) + image.transpose(2, 0, 1).tobytes()


def _write_cifar10(builder: tfds.core.DatasetBuilder, src: str) -> _Sources:
  """CIFAR-10, binary version: `cifar-10-binary.tar.gz` holding `cifar-10-batches-bin/`.

  train: 40 RGB 32x32 pictures, 8 in each of `data_batch_1..5.bin`, labels cycling over all 10
  classes; test: 20 in `test_batch.bin`, labels cycling too. `batches.meta.txt` has the real
  class names (the builder reads them into its `label` feature).
  """
  del builder
  members = {'cifar-10-batches-bin/batches.meta.txt': ('\n'.join(_CIFAR10_NAMES) + '\n\n').encode()}
  batches = [f'data_batch_{b}.bin' for b in range(1, 6)]
  for split, files in (('train', batches), ('test', ['test_batch.bin'])):
    count = SPLITS['cifar10'][split]
    per_file = count // len(files)
    for f, name in enumerate(files):
      records = []
      for i in range(f * per_file, (f + 1) * per_file):
        records.append(_cifar_record((i % 10,), _picture(_rng('cifar10', split, i), 32, 32)))
      members[f'cifar-10-batches-bin/{name}'] = b''.join(records)
  path = _tar(os.path.join(src, 'cifar-10-binary.tar.gz'), members, 'w:gz')
  return _Sources(files={'cifar-10-binary.tar.gz': path})


def _write_cifar100(builder: tfds.core.DatasetBuilder, src: str) -> _Sources:
  """CIFAR-100, binary version: `cifar-100-binary.tar.gz` holding `cifar-100-binary/`.

  train: 40 RGB 32x32 pictures in `train.bin` with 10 different fine labels, 4 pictures each
  (7 * (i mod 10) mod 100: a class needs 2 or more for a held-out validation example),
  test: 20 in `test.bin` (fine labels 3 * i mod 100); each record's coarse label is its fine
  class's real superclass. `coarse_label_names.txt` / `fine_label_names.txt` have the real 20
  and 100 names, so the features report 20 and 100 classes.
  """
  del builder
  members = {
    'cifar-100-binary/coarse_label_names.txt': ('\n'.join(_CIFAR100_COARSE) + '\n').encode(),
    'cifar-100-binary/fine_label_names.txt': ('\n'.join(_CIFAR100_FINE) + '\n').encode(),
  }
  for split, step, period in (('train', 7, 10), ('test', 3, 100)):
    records = []
    for i in range(SPLITS['cifar100'][split]):
      fine = step * (i % period) % 100
      image = _picture(_rng('cifar100', split, i), 32, 32)
      records.append(_cifar_record((_CIFAR100_FINE_TO_COARSE[fine], fine), image))
    members[f'cifar-100-binary/{split}.bin'] = b''.join(records)
  path = _tar(os.path.join(src, 'cifar-100-binary.tar.gz'), members, 'w:gz')
  return _Sources(files={'cifar-100-binary.tar.gz': path})


# 12 real synsets; 5 training pictures each, some under the names the builder fixes.
_IMAGENET_SYNSETS = (
  'n01440764 n01443537 n01739381 n02077923 n02105855 n02123045 n02492035 n03018349 '
  'n04258138 n07583066 n09193705 n13037406'
).split()
IMAGENET_CMYK = ('n01739381_1309.JPEG', 'n02077923_14822.JPEG')  # in the builder's CMYK_IMAGES
IMAGENET_PNG = ('n02105855_2933.JPEG',)  # in the builder's PNG_IMAGES
IMAGENET_GREY = ('n01443537_11.JPEG', 'n04258138_12.JPEG', 'ILSVRC2012_val_00000004.JPEG')
_SIZES = ((60, 80), (100, 70), (75, 75), (48, 96), (90, 64), (64, 112))  # (height, width)


def _imagenet_picture(name: str, index: int) -> bytes:
  """The file `name`: a JPEG (RGB, or greyscale for IMAGENET_GREY, CMYK for IMAGENET_CMYK) or,
  for IMAGENET_PNG, a PNG under the .JPEG name, as in the real archive."""
  picture = _picture(_rng('imagenet2012', name), *_SIZES[index % len(_SIZES)])
  if name in IMAGENET_PNG:
    return _encode(picture, 'PNG')
  mode = 'CMYK' if name in IMAGENET_CMYK else 'L' if name in IMAGENET_GREY else 'RGB'
  return _encode(picture, 'JPEG', mode)


def _write_imagenet2012(builder: tfds.core.DatasetBuilder, src: str) -> _Sources:
  """ImageNet 2012 (ILSVRC): the manual folder with `ILSVRC2012_img_train.tar` and
  `ILSVRC2012_img_val.tar` (no `ILSVRC2012_img_test.tar`: the builder then makes no test split,
  as for most users).

  train: 60 pictures, 5 for each of 12 real synsets (60, so that big_vision's minival
  `train[99%:]` is not empty: 1 picture), in per-class tars `n0xxxxxxx.tar` of
  `n0xxxxxxx_N.JPEG`: RGB JPEGs of varied sizes (48..112 pixels a side), two greyscale JPEGs,
  two CMYK JPEGs under names of the builder's `CMYK_IMAGES` and a PNG under the name in its
  `PNG_IMAGES` (the builder re-encodes those three as RGB JPEGs). The grey JPEGs are stored as
  they are (1 channel); the image feature decodes them to 3 channels.
  validation: 10 pictures `ILSVRC2012_val_00000001..10.JPEG` (one greyscale). The builder gives
  the k-th name in sorted order the k-th line of its bundled `validation_labels.txt`, so these
  get the real labels of the first ten validation pictures.
  """
  module = sys.modules[type(builder).__module__]
  assert set(IMAGENET_CMYK) <= set(module.CMYK_IMAGES), 'tfds changed its CMYK_IMAGES'
  assert set(IMAGENET_PNG) <= set(module.PNG_IMAGES), 'tfds changed its PNG_IMAGES'
  fixed = {name.split('_')[0]: name for name in IMAGENET_CMYK + IMAGENET_PNG}
  classes = {}
  for c, synset in enumerate(_IMAGENET_SYNSETS):
    names = [f'{synset}_{n}.JPEG' for n in range(10, 15)]
    names[0] = fixed.get(synset, names[0])
    pictures = {name: _imagenet_picture(name, c + k) for k, name in enumerate(names)}
    classes[f'{synset}.tar'] = _tar(io.BytesIO(), pictures).getvalue()
  manual = os.path.join(src, 'manual')
  os.makedirs(manual)
  _tar(os.path.join(manual, 'ILSVRC2012_img_train.tar'), classes)
  validation = {}
  for k in range(1, SPLITS['imagenet2012']['validation'] + 1):
    name = f'ILSVRC2012_val_{k:08d}.JPEG'
    validation[name] = _imagenet_picture(name, k)
  _tar(os.path.join(manual, 'ILSVRC2012_img_val.tar'), validation)
  return _Sources(manual_dir=manual)


# 10 breeds (5 cats: capitalised, as in the real names; 5 dogs) and their pictures' numbers.
_PET_TRAINVAL = {
  'Abyssinian': (1, 2, 34),
  'Bengal': (1, 2, 3),
  'Bombay': (1, 2, 3),
  'Egyptian_Mau': (1, 2, 3),
  'Persian': (1, 2, 3),
  'beagle': (1, 2, 116),
  'chihuahua': (1, 2, 3),
  'pug': (1, 2, 3),
  'samoyed': (1, 2, 3),
  'yorkshire_terrier': (1, 2, 3),
}
_PET_TEST = {breed: (100,) for breed in _PET_TRAINVAL} | {
  'Egyptian_Mau': (14, 100),
  'samoyed': (100, 101),
}
PET_RGBA_PNG = 'Abyssinian_34'  # a PNG with alpha under .jpg, in the builder's _CORRUPT_SAMPLES
PET_GREY_PNG = 'Egyptian_Mau_14'  # a greyscale PNG under .jpg, in _CORRUPT_SAMPLES too
PET_RGB_FIXED = 'beagle_116'  # an RGB JPEG the builder re-encodes (in _CORRUPT_SAMPLES)
PET_GREY_JPEG = 'Bombay_2'  # a greyscale JPEG, stored as it is
PET_NO_XML = 'samoyed_3'  # a trainval picture without head annotation (the real set has some)
_PET_SIZES = ((60, 80), (80, 60), (70, 100), (96, 72), (90, 90))  # (height, width)


def _pet_xml(name: str, height: int, width: int, box: tuple[int, int, int, int]) -> bytes:
  """The head annotation `annotations/xmls/<name>.xml` (VOC style, box in 1-based pixels)."""
  ymin, xmin, ymax, xmax = box
  species = 'cat' if name[0].isupper() else 'dog'
  return f"""<annotation><folder>OXIIIT</folder><filename>{name}.jpg</filename>
<source><database>OXFORD-IIIT Pet Dataset</database><annotation>OXIIIT</annotation>
<image>flickr</image></source><size><width>{width}</width><height>{height}</height>
<depth>3</depth></size><segmented>0</segmented><object><name>{species}</name><pose>Frontal</pose>
<truncated>0</truncated><occluded>0</occluded><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>
<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox><difficult>0</difficult></object></annotation>
""".encode()


def _write_oxford_iiit_pet(builder: tfds.core.DatasetBuilder, src: str) -> _Sources:
  """Oxford-IIIT Pet: `images.tar.gz` (`images/<Breed>_<n>.jpg`) and `annotations.tar.gz`
  (`annotations/trainval.txt`, `test.txt`, `trimaps/<Breed>_<n>.png`, `xmls/<Breed>_<n>.xml`).

  train (trainval.txt): 30 pictures, 3 of each of 10 breeds (5 cat, 5 dog breeds);
  test (test.txt): 12 pictures, 1 of each breed and 2 more. Lines are the real
  `<name> <class 1..37> <species 1 cat, 2 dog> <breed id within species>`. Pictures are RGB
  JPEGs of 60..100 pixels a side, except: `Abyssinian_34` an RGBA PNG and `Egyptian_Mau_14` a
  greyscale PNG named .jpg (both in the builder's corrupt list, re-encoded by it as JPEG, alpha
  dropped), `beagle_116` also re-encoded, `Bombay_2` a greyscale JPEG stored as is. Trimaps are
  greyscale PNGs of the picture's size with 1 = pet (an ellipse), 3 = its border, 2 = background.
  Head boxes (xmls) for the trainval pictures except `samoyed_3`, none for test (as in the real
  data, where the builder then gives an empty box).
  """
  corrupt = sys.modules[type(builder).__module__]._CORRUPT_SAMPLES
  assert {PET_RGBA_PNG, PET_GREY_PNG, PET_RGB_FIXED} <= set(corrupt), 'tfds changed its list'
  names = builder.info.features['label'].names
  cats = [n for n in names if n[0].isupper()]
  dogs = [n for n in names if not n[0].isupper()]
  images, annotations = {}, {}
  for split, breeds in (('trainval', _PET_TRAINVAL), ('test', _PET_TEST)):
    lines = []
    for breed, numbers in breeds.items():
      species = 1 if breed in cats else 2
      breed_id = (cats if species == 1 else dogs).index(breed) + 1
      for k, number in enumerate(numbers):
        name = f'{breed}_{number}'
        lines.append(f'{name} {names.index(breed) + 1} {species} {breed_id}\n')
        rng = _rng('oxford_iiit_pet', name)
        height, width = _PET_SIZES[(len(lines) + k) % len(_PET_SIZES)]
        picture = _picture(rng, height, width)
        if name == PET_RGBA_PNG:
          alpha = np.full((height, width, 1), 255, np.uint8)
          alpha[: height // 4] = 0
          data = _encode(np.concatenate([picture, alpha], -1), 'PNG', 'RGBA')
        elif name == PET_GREY_PNG:
          data = _encode(picture, 'PNG', 'L')
        else:
          data = _encode(picture, 'JPEG', 'L' if name == PET_GREY_JPEG else 'RGB')
        images[f'images/{name}.jpg'] = data
        # Trimap: an ellipse of pet (1) with a border band (3) on background (2).
        cy, cx = rng.uniform(0.4, 0.6) * height, rng.uniform(0.4, 0.6) * width
        ry, rx = rng.uniform(0.25, 0.4) * height, rng.uniform(0.25, 0.4) * width
        y, x = np.mgrid[0:height, 0:width]
        d = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
        trimap = np.where(d < 0.85, 1, np.where(d < 1.1, 3, 2)).astype(np.uint8)
        annotations[f'annotations/trimaps/{name}.png'] = _encode(trimap, 'PNG', 'L')
        if split == 'trainval' and name != PET_NO_XML:
          box = (round(cy - ry) + 1, round(cx - rx / 2) + 1, round(cy), round(cx + rx / 2))
          annotations[f'annotations/xmls/{name}.xml'] = _pet_xml(name, height, width, box)
    annotations[f'annotations/{split}.txt'] = ''.join(lines).encode()
  return _Sources(
    files={
      'images.tar.gz': _tar(os.path.join(src, 'images.tar.gz'), images, 'w:gz'),
      'annotations.tar.gz': _tar(os.path.join(src, 'annotations.tar.gz'), annotations, 'w:gz'),
    }
  )


_VOC_POSES = ('Frontal', 'Left', 'Right', 'Rear', 'Unspecified')
_VOC_SIZES = ((120, 90), (90, 120), (160, 120), (100, 100), (150, 80), (80, 110))  # (w, h)
VOC_OBJECTS = (1, 6, 4, 2, 7, 5, 3)  # objects in the k-th picture: VOC_OBJECTS[k % 7]


def _voc_xml(image_id: str, width: int, height: int, objects: list[dict]) -> bytes:
  """`Annotations/<id>.xml` in the VOC2007 layout; boxes in 1-based pixels."""
  parts = [
    f'<annotation>\n\t<folder>VOC2007</folder>\n\t<filename>{image_id}.jpg</filename>\n'
    '\t<source>\n\t\t<database>The VOC2007 Database</database>\n'
    '\t\t<annotation>PASCAL VOC2007</annotation>\n\t\t<image>flickr</image>\n\t</source>\n'
    f'\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n'
    '\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n'
  ]
  for o in objects:
    parts.append(
      f'\t<object>\n\t\t<name>{o["name"]}</name>\n\t\t<pose>{o["pose"]}</pose>\n'
      f'\t\t<truncated>{o["truncated"]}</truncated>\n\t\t<difficult>{o["difficult"]}</difficult>\n'
      f'\t\t<bndbox>\n\t\t\t<xmin>{o["xmin"]}</xmin>\n\t\t\t<ymin>{o["ymin"]}</ymin>\n'
      f'\t\t\t<xmax>{o["xmax"]}</xmax>\n\t\t\t<ymax>{o["ymax"]}</ymax>\n\t\t</bndbox>\n'
      '\t</object>\n'
    )
  return (''.join(parts) + '</annotation>\n').encode()


def _write_voc(builder: tfds.core.DatasetBuilder, src: str) -> _Sources:
  """PASCAL VOC 2007: `VOCtrainval_06-Nov-2007.tar` and `VOCtest_06-Nov-2007.tar`, each holding
  `VOCdevkit/VOC2007/{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/*.txt}`.

  train: 12, validation: 8 (both from the trainval tar), test: 10 RGB JPEG pictures of 80..160
  pixels a side with 6-digit ids (splits interleaved, as in the real set). Each picture has 1 to
  7 objects (`VOC_OBJECTS`), drawn as filled rectangles; their classes cycle over the 20 VOC
  classes, poses over the 5 VOC poses, `truncated` is set on every third object (whose box then
  touches the picture's right edge) and `difficult` on every fourth. `ImageSets/Main` has
  `train.txt`, `val.txt`, `trainval.txt` (or `test.txt`) and the per-class `<class>_<set>.txt`
  files (1 present, 0 only difficult, -1 absent), which the builder does not read.
  """
  classes = builder.info.features['objects']['label'].names
  splits = ['train'] * 12 + ['val'] * 8 + ['test'] * 10
  _rng('voc', 'splits').shuffle(splits)
  sets = {'train': [], 'val': [], 'test': []}
  members = {'trainval': {}, 'test': {}}
  count = 0  # objects so far
  for k, split in enumerate(splits):
    image_id = f'{5 + 3 * k:06d}'
    rng = _rng('voc', image_id)
    width, height = _VOC_SIZES[k % len(_VOC_SIZES)]
    picture = _picture(rng, height, width)
    objects = []
    for _ in range(VOC_OBJECTS[k % len(VOC_OBJECTS)]):
      xmin, ymin = int(rng.integers(1, width // 2)), int(rng.integers(1, height // 2))
      xmax = int(rng.integers(xmin + 8, width + 1))
      ymax = int(rng.integers(ymin + 8, height + 1))
      truncated = int(count % 3 == 0)
      if truncated:
        xmax = width
      picture[ymin - 1 : ymax, xmin - 1 : xmax] = rng.integers(0, 256, 3)
      objects.append(
        dict(
          name=classes[count % 20],
          pose=_VOC_POSES[count % 5],
          truncated=truncated,
          difficult=int(count % 4 == 3),
          xmin=xmin,
          ymin=ymin,
          xmax=xmax,
          ymax=ymax,
        )
      )
      count += 1
    tar = 'test' if split == 'test' else 'trainval'
    members[tar][f'VOCdevkit/VOC2007/Annotations/{image_id}.xml'] = _voc_xml(
      image_id, width, height, objects
    )
    members[tar][f'VOCdevkit/VOC2007/JPEGImages/{image_id}.jpg'] = _encode(picture)
    sets[split].append((image_id, objects))
  sets['trainval'] = sorted(sets['train'] + sets['val'])
  for set_name, images in sets.items():
    tar = members['test' if set_name == 'test' else 'trainval']
    main = 'VOCdevkit/VOC2007/ImageSets/Main'
    tar[f'{main}/{set_name}.txt'] = ''.join(f'{i}\n' for i, _ in images).encode()
    for name in classes:
      lines = []
      for image_id, objects in images:
        mine = [o for o in objects if o['name'] == name]
        flag = -1 if not mine else 0 if all(o['difficult'] for o in mine) else 1
        lines.append(f'{image_id} {flag:2d}\n')
      tar[f'{main}/{name}_{set_name}.txt'] = ''.join(lines).encode()
  return _Sources(
    files={
      'VOCtrainval_06-Nov-2007.tar': _tar(
        os.path.join(src, 'VOCtrainval_06-Nov-2007.tar'), members['trainval']
      ),
      'VOCtest_06-Nov-2007.tar': _tar(
        os.path.join(src, 'VOCtest_06-Nov-2007.tar'), members['test']
      ),
    }
  )


_WRITERS: dict[str, Callable[[tfds.core.DatasetBuilder, str], _Sources]] = {
  'mnist': _write_mnist,
  'cifar10': _write_cifar10,
  'cifar100': _write_cifar100,
  'imagenet2012': _write_imagenet2012,
  'oxford_iiit_pet': _write_oxford_iiit_pet,
  'voc/2007': _write_voc,
}


# ---------------------------------------------------------------------------------------------
# Building.


def _map_urls(fn: Callable, urls):
  """`fn` applied to each URL (a str or a `tfds.download.Resource`) of a dict/list/tuple tree."""
  if isinstance(urls, dict):
    return {k: _map_urls(fn, v) for k, v in urls.items()}
  if isinstance(urls, list | tuple):
    return type(urls)(_map_urls(fn, v) for v in urls)
  return fn(urls)


@contextlib.contextmanager
def _downloads_from(files: dict[str, str]) -> Iterator[None]:
  """Makes `DownloadManager.download` return the local file named like the URL's last part,
  and `download_and_extract` the real `extract` of it; an unknown URL raises."""

  def local(url) -> tfds.core.Path:
    url = str(getattr(url, 'url', url))
    name = url.rstrip('/').rsplit('/', 1)[-1]
    if name not in files:
      raise AssertionError(f'tfds_fixtures has no local file for {url} (offline build)')
    return tfds.core.Path(files[name])

  def download(self, url_or_urls):
    del self
    return _map_urls(local, url_or_urls)

  def download_and_extract(self, url_or_urls):
    return self.extract(download(self, url_or_urls))

  manager = tfds.download.DownloadManager
  with (
    mock.patch.object(manager, 'download', download),
    mock.patch.object(manager, 'download_and_extract', download_and_extract),
  ):
    yield


def prepare(name: str, data_dir: str, file_format: str = 'array_record') -> None:
  """Builds the dataset `name` (one of DATASETS) into `data_dir` with its real tfds builder, from
  generated sources, as `tfds build <name> --file_format=<file_format>` would. A no-op if it is
  already prepared there."""
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return
  with tempfile.TemporaryDirectory(prefix=f'tfds-src-{builder.name}-') as src:
    sources = _WRITERS[name](builder, src)
    module = sys.modules[type(builder).__module__]
    config = tfds.download.DownloadConfig(manual_dir=sources.manual_dir, try_download_gcs=False)
    with contextlib.ExitStack() as stack:
      stack.enter_context(_downloads_from(sources.files))
      for constant, value in sources.constants.items():
        stack.enter_context(mock.patch.object(module, constant, value))
      builder.download_and_prepare(
        download_dir=os.path.join(src, 'downloads'),
        download_config=config,
        file_format=file_format,
      )


def prepare_all(data_dir: str) -> None:
  """Builds all of DATASETS into `data_dir` (those not yet prepared there)."""
  for name in DATASETS:
    prepare(name, data_dir)


def prepare_all_once(root: str, folder: str = 'tfds_real') -> str:
  """`<root>/<folder>` with all of DATASETS prepared; the first process to get here builds it
  (into a temporary folder renamed at the end) while the others wait on a lock, then reuse it."""
  final = os.path.join(root, folder)
  with open(final + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not os.path.isdir(final):
      building = tempfile.mkdtemp(prefix=folder + '.', dir=root)
      try:
        prepare_all(building)
      except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
      os.rename(building, final)
  return final
