"""YOLO-style detection (notes 004: grid cells, anchor boxes, NMS, mAP). Offline default: the
digit_boxes scenes, no download.

  python main.py --config=configs/yolo.py --workdir=runs/yolo_digits
  --config.model.anchors='((2.0, 2.0), (3.0, 3.0))'      two anchor shapes (cell units)
  --config.detection.loss=notes      the notes' plain squared error instead of YOLOv2's loss
  --config.detection.box_weight=5 --config.detection.object_weight=1
  --config.detection.no_object_weight=0.5    YOLOv1's weights, not darknet's (objectness collapses)

digit_boxes: the digit_scenes canvases (64x64, 1-3 handwritten digits of 16-24 px, train and
test scenes from disjoint digits) with each digit's box and class (10 classes). yolo_tiny: a
small ResNet with the ImageNet stem whose stride-8 'stage2' map gives an 8x8 grid, one anchor,
a 3x3 conv head predicting y = [p_c, b_x, b_y, b_h, b_w, c_0..c_9] per cell and anchor, trained
with YOLOv2's loss as darknet's region layer has it (objectness towards the predicted box's IoU,
log-space sizes, no-object terms ignored above IoU 0.6; yolov2-voc.cfg's scales). The run writes
summary.json (test_map50: VOC mAP at IoU 0.5 after per-class NMS, all-point; test_map50_11point:
VOC2007's 11-point; per-class AP) and boxes.png (test scenes with true boxes and detections).
600 steps take about 1 min on 2 shared AMD EPYC cores and reach test mAP@0.5 0.973-0.983
(11-point 0.929-0.936; 3 seeds); the notes' loss 0.949-0.963 (docs/detection.md).

Variants:
  :voc    PASCAL VOC 2007 (tfds 'voc/2007', prepared beforehand; see README) at 416x416 on a
          ResNet-18 (stride 32: a 13x13 grid) with YOLOv2's five VOC anchors, 100 epochs; no
          augmentation (boxes are not moved by the pipeline), so expect far below YOLOv2's 76.8
          (a VOC2007 11-point mAP: compare test_map50_11point; difficult objects are skipped
          as the devkit does).
"""

import ml_collections
from ml_collections import config_dict

from configs import default

# YOLOv2's VOC anchors (Redmon & Farhadi 2017, its released yolo-voc.cfg), (h, w) in cells of
# a 13x13 grid.
VOC_ANCHORS = (
  (1.73145, 1.3221),
  (4.00944, 3.19275),
  (8.09892, 5.05587),
  (4.84053, 9.47112),
  (10.0071, 11.2364),
)


def add_detection_fields(config: ml_collections.ConfigDict) -> None:
  """The options of the detection task (cnn_jax/tasks/: Detection)."""
  config.task = 'detection'
  det = config.detection = ml_collections.ConfigDict()
  # 'yolov2': YOLOv2's loss as darknet's region layer trains it, the reference's behaviour;
  # 'notes': the notes' plain squared error (cnn_jax/ops/detection_loss.py: yolo_loss_terms).
  det.loss = 'yolov2'
  # None: the loss's own (detection_loss.LOSS_DEFAULTS). 'yolov2': darknet's yolov2-voc.cfg, box
  # (coord_scale) 1, object 5, no-object 1, class 1, class 'cross_entropy' (darknet's class
  # delta), ignore above IoU 0.6 (its thresh); YOLOv1's box 5, object 1, no-object 0.5 let the
  # objectness collapse here (docs/detection.md). 'notes': every weight 1, class 'squared',
  # nothing ignored.
  det.box_weight = config_dict.placeholder(float)  # lambda_coord, darknet's coord_scale
  det.object_weight = config_dict.placeholder(float)  # darknet's object_scale
  det.no_object_weight = config_dict.placeholder(float)  # lambda_noobj, darknet's noobject_scale
  det.class_weight = config_dict.placeholder(float)  # darknet's class_scale
  det.class_loss = config_dict.placeholder(str)  # 'squared' | 'cross_entropy'
  det.ignore_threshold = config_dict.placeholder(float)  # darknet's thresh; 1: ignore none
  det.iou_threshold = 0.5  # NMS, and a detection's IoU to count as correct (mAP@0.5)
  det.score_threshold = 0.01  # detections scoring at most this are dropped before NMS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  add_detection_fields(config)
  config.label_smoothing = 0.0
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 3e-3
  config.optimizer.weight_decay = 1e-4
  if arg in (None, '', 'digits'):
    config.model.name = 'yolo_tiny'
    config.model.anchors = ((2.5, 2.5),)
    config.dataset = 'digit_boxes'
    config.image_size = 64
    config.image_channels = 1
    config.batch_size = 32
    config.eval_batch_size = 100
    config.num_train_steps = 600
    config.optimizer.warmup_steps = 30
    config.log_every_steps = 20
    config.eval_every_steps = config.checkpoint_every_steps = 200
  elif arg == 'voc':
    config.model.name = 'yolo'
    config.model.backbone = 'resnet18'
    config.model.anchors = VOC_ANCHORS
    config.dataset = 'voc'
    config.image_size = 416
    config.batch_size = 64
    config.eval_batch_size = 64
    config.num_epochs = 100.0
    config.optimizer.lr = 1e-3
    config.optimizer.warmup_epochs = 1.0
    config.log_every_steps = 50
    config.eval_every_steps = config.checkpoint_every_steps = 2_000
  else:
    raise ValueError(f"unknown variant '{arg}'; use '' (digit_boxes) or 'voc'")
  return config
