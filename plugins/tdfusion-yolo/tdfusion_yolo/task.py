"""``yolo``: an ultralytics YOLO detector as TDFusion's task network T.

* **Network**: any ultralytics detection model yaml (``model="yolov8n.yaml"`` by default; ``yolov8{n,s,m,l,x}.yaml``,
  ``yolo11n.yaml``, a path to your own yaml, or a yaml dict), built randomly initialised with ``nc = num_classes`` and
  1 input channel (``input_kind="luminance"``, the default: the fused Y, as the released TDFusion detector's stem
  ``Conv(1, ...)``) or 3 (``input_kind="rgb"``, the fused Y with the sources' chroma). Nothing is downloaded.
  Weights come only from a local ``checkpoint`` path: an ultralytics ``.pt`` (loaded with ultralytics' own safe,
  allow-listed unpickler; matching tensors are transferred as ultralytics' ``load`` does, so a COCO checkpoint can
  start a 1-class model) or a plain state dict such as a tdfusion run saves (loaded strictly).
* **Loss**: ultralytics' own v8 detection loss (``E2ELoss`` for end-to-end heads) with gains ``box``, ``cls``,
  ``dfl`` (ultralytics' defaults 7.5, 0.5, 1.5). Ultralytics returns the three gained terms multiplied by the batch
  size; :meth:`YoloTask.compute_loss` returns their **sum divided by the batch size** by default
  (``loss_reduction="mean"``: ``box*L_box + cls*L_cls + dfl*L_dfl``, what the released TDFusion code optimises and
  independent of the batch size), or ultralytics' value (``loss_reduction="ultralytics"``).
  The criterion is rebuilt from ``network`` on every call and nothing is cached on the model, so the loss reaches
  the parameters only through the module passed in, as :func:`tdfusion_core.kernel.task.functional_task_loss` requires.
* **Images** are ``(B, C, H, W)`` in [0, 1]; if H or W is not a multiple of the network's largest stride (32) the
  batch is padded at the bottom and right with ultralytics' letterbox grey (114/255), which leaves pixel boxes valid.
* **Targets**: core's per-image ``(N, 5)`` rows ``class, x0, y0, x1, y1`` in pixels (see :mod:`.targets`).
* **Evaluation**: ultralytics' NMS (``ultralytics.utils.nms.non_max_suppression``), its prediction matching at IoU
  0.50:0.05:0.95 and ``DetMetrics`` / ``ap_per_class``: ``mAP50``, ``mAP75``, ``mAP50:95`` (mAP@[.5:.95], under
  the key core and the other detection tasks use; ultralytics calls it ``mAP50-95``), ``precision`` and ``recall``.
  Never plots (plots would fetch a font).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as nnf

from tdfusion_core.common.modes import eval_mode
from tdfusion_core.common.torch_files import CheckpointError, read_torch_file, unsafe_pickle_message
from tdfusion_core.kernel.task import Task
from tdfusion_yolo import ensure_offline, ensure_ready
from tdfusion_yolo.targets import as_box_list, to_ultralytics_batch

#: ultralytics' default loss gains (``ultralytics/cfg/default.yaml``)
DEFAULT_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
#: ultralytics' letterbox padding value
PAD_VALUE = 114.0 / 255.0
#: detection heads whose training output the v8 detection loss understands
SUPPORTED_HEADS = ("Detect", "v10Detect")
LOSS_REDUCTIONS = ("mean", "ultralytics")


def frozen_parameters_to_buffers(network: nn.Module) -> list[str]:
    """Turn parameters with ``requires_grad=False`` into buffers of the same name; return their names.

    Ultralytics keeps constants as frozen parameters (the DFL projection ``arange(16)`` of the Detect head). Core's
    meta step differentiates the loss with respect to every entry of ``named_parameters()``, and in training mode the
    DFL layer is not on the loss path, so such a parameter would make ``autograd.grad`` fail. As a buffer it keeps
    its state-dict key (checkpoints load unchanged) and is simply not a parameter of T.
    """
    moved = []
    for module_name, module in network.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not param.requires_grad:
                del module._parameters[name]
                module.register_buffer(name, param.detach())
                moved.append(f"{module_name}.{name}" if module_name else name)
    return moved


class YoloTask(Task):
    """Object detection with an ultralytics YOLO model.

    Args:
        num_classes: number of classes (``nc``); ``None`` keeps the yaml's ``nc``.
        checkpoint: local ``.pt`` / state-dict path loaded after building (never downloaded).
        lr: learning rate of T's Adam optimizer.
        input_kind: ``"luminance"`` (1-channel model on the fused Y, default, as released) or ``"rgb"`` (3 channels).
        model: ultralytics detection yaml name or path, or a yaml dict (default ``"yolov8n.yaml"``).
        box, cls, dfl: loss gains (defaults 7.5, 0.5, 1.5 as ultralytics).
        loss_reduction: ``"mean"`` (default; gained terms summed, per image) or ``"ultralytics"`` (times batch size).
        conf, iou, max_det: evaluation NMS settings (ultralytics' validation defaults 0.001, 0.7, 300).
        class_names: optional class names (a list or ``{index: name}``), used in per-class results.
    """

    num_classes: int | None
    name = "yolo"
    input_kind = "luminance"
    target_kind = "boxes"
    #: the released code's detection task size (M3FD); runs may configure another (LLVIP: 256x320)
    default_input_size = (192, 256)

    def __init__(
        self,
        num_classes: int | None = None,
        checkpoint: str | Path | None = None,
        lr: float = 1e-4,
        input_kind: str | None = None,
        model: str | Path | Mapping[str, Any] = "yolov8n.yaml",
        box: float = DEFAULT_GAINS["box"],
        cls: float = DEFAULT_GAINS["cls"],
        dfl: float = DEFAULT_GAINS["dfl"],
        loss_reduction: str = "mean",
        conf: float = 0.001,
        iou: float = 0.7,
        max_det: int = 300,
        class_names: Iterable[str] | Mapping[int, str] | None = None,
        **config: Any,
    ) -> None:
        ensure_ready()  # ultralytics / torchvision missing: one line with the install command, before any work
        super().__init__(num_classes=num_classes, checkpoint=checkpoint, lr=lr, **config)
        if input_kind is not None:
            if input_kind not in ("luminance", "rgb"):
                raise ValueError(f"input_kind must be 'luminance' or 'rgb', not {input_kind!r}")
            self.input_kind = input_kind  # type: ignore[assignment,unused-ignore]
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, not {loss_reduction!r}")
        for gain_name, gain in (("box", box), ("cls", cls), ("dfl", dfl)):
            if not (math.isfinite(float(gain)) and float(gain) >= 0):
                raise ValueError(f"loss gain {gain_name} must be a finite non-negative number, not {gain!r}")
        if not 0 <= conf <= 1 or not 0 <= iou <= 1:
            raise ValueError(f"conf and iou must lie in [0, 1], got conf={conf}, iou={iou}")
        self.model_cfg = dict(model) if isinstance(model, Mapping) else str(model)
        self.gains = {"box": float(box), "cls": float(cls), "dfl": float(dfl)}
        self.loss_reduction = loss_reduction
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        if class_names is None:
            self.class_names: dict[int, str] | None = None
        elif isinstance(class_names, Mapping):
            self.class_names = {int(k): str(v) for k, v in class_names.items()}
        else:
            self.class_names = dict(enumerate(str(n) for n in class_names))

    # ------------------------------------------------------------------ network
    @property
    def in_channels(self) -> int:
        """Input channels of the network: 1 for ``"luminance"``, 3 for ``"rgb"``."""
        return 1 if self.input_kind == "luminance" else 3

    def build_network(self) -> nn.Module:
        """Build the detection model from the yaml, randomly initialised, offline."""
        ensure_offline()
        from ultralytics.nn.tasks import DetectionModel

        cfg = self.model_cfg
        if isinstance(cfg, str) and not cfg.endswith((".yaml", ".yml")):
            raise ValueError(
                f"model must be an ultralytics model yaml (e.g. 'yolov8n.yaml') or a yaml dict, not {cfg!r}; "
                "pass trained weights as checkpoint=PATH.pt"
            )
        try:
            net: Any = DetectionModel(cfg, ch=self.in_channels, nc=self.num_classes, verbose=False)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"ultralytics model yaml {cfg!r} not found (neither a local file nor one shipped with ultralytics)"
            ) from exc
        head: Any = net.model[-1]
        if type(head).__name__ not in SUPPORTED_HEADS:
            raise ValueError(
                f"model {cfg!r} has a {type(head).__name__} head; the yolo task needs a plain detection model "
                f"(head one of {SUPPORTED_HEADS}), e.g. yolov8n.yaml"
            )
        if self.num_classes is None:
            warnings.warn(
                f"yolo task: num_classes not given (the dataset names no classes); using the yaml's nc={head.nc}. "
                "Pass task_options={num_classes: N} or the dataset's class_names.",
                UserWarning,
                stacklevel=2,
            )
            self.num_classes = int(head.nc)
        frozen_parameters_to_buffers(net)
        net.names = self._names(int(head.nc))
        net.args = self._hyp()
        return net

    def _names(self, nc: int) -> dict[int, str]:
        names = {i: str(i) for i in range(nc)}
        if self.class_names:
            names.update({k: v for k, v in self.class_names.items() if 0 <= k < nc})
        return names

    def _hyp(self) -> SimpleNamespace:
        """The hyper-parameters ultralytics' criterion reads from ``model.args``."""
        from ultralytics.utils import IterableSimpleNamespace

        return IterableSimpleNamespace(**self.gains)

    def load_checkpoint(self, network: Any, path: Path) -> None:
        """Load weights from a local file: a state dict (strict), or an ultralytics ``.pt`` checkpoint.

        The file is read with :func:`tdfusion_core.common.torch_files.read_torch_file` (``weights_only=True``, one-line
        errors for empty, truncated and foreign files). Ultralytics checkpoints are pickles of whole models, which that
        refuses; they are then read with ultralytics' allow-listed ``weights_only`` loader (no arbitrary code runs)
        and transferred tensor by tensor where names and shapes match (so ``nc`` may differ). A file neither accepts
        is refused with core's message (how to convert a file one trusts). ``trust_checkpoint=True`` in the task
        config allows a full unpickle, for a checkpoint you made yourself only. Nothing is ever downloaded.
        """
        path = Path(path)
        refused: CheckpointError | None = None
        try:
            state = read_torch_file(path, what="task checkpoint")
        except CheckpointError as exc:  # objects beyond tensors (an ultralytics pickle), or a bad file
            state, refused = None, exc
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
        if isinstance(state, Mapping) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
            network.load_state_dict(state)
            return
        self._load_ultralytics_checkpoint(network, path, refused)

    def _load_ultralytics_checkpoint(self, network: Any, path: Path, refused: CheckpointError | None) -> None:
        ensure_offline()
        from ultralytics.nn.tasks import _SafeLoad, torch_safe_load

        safe_only = not bool(self.config.get("trust_checkpoint", False))
        if safe_only and not _SafeLoad.SUPPORTED:  # ultralytics would silently fall back to a full unpickle
            raise refused or CheckpointError(unsafe_pickle_message(path, "an ultralytics model"))
        try:
            ckpt, _ = torch_safe_load(str(path), safe_only=safe_only)
        except Exception as exc:
            if refused is not None:  # core's one-line reason (unsafe / empty / truncated / foreign) says it best
                raise CheckpointError(str(refused)) from exc
            raise CheckpointError(
                f"cannot read task checkpoint {path} as a state dict or an ultralytics checkpoint: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
        source = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, Mapping) else ckpt
        if not isinstance(source, nn.Module):
            raise ValueError(
                f"{path} holds no ultralytics model (keys: {sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt)})"
            )
        before = {k: v.clone() for k, v in network.state_dict().items()}
        network.load({"model": source}, verbose=False)  # ultralytics' transfer (handles nc and channel changes)
        after = network.state_dict()
        changed = sum(not torch.equal(before[k], after[k]) for k in before if k in after)
        if changed == 0:
            raise ValueError(f"no tensor of {path} matches the network built from {self.model_cfg!r}")
        network.args = self._hyp()  # load may not touch it, but keep the task's gains authoritative

    # ------------------------------------------------------------------ loss
    @staticmethod
    def _stride(network: nn.Module) -> int:
        stride = getattr(network, "stride", None)
        return int(torch.as_tensor(stride).max()) if stride is not None else 32

    def prepare_images(self, network: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Check the channel count and pad H, W up to a multiple of the network stride (bottom / right)."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"yolo task with input_kind={self.input_kind!r} expects images (B, {self.in_channels}, H, W), "
                f"got {tuple(images.shape)}"
            )
        s = self._stride(network)
        h, w = images.shape[-2:]
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            images = nnf.pad(images, (0, pw, 0, ph), value=PAD_VALUE)
        return images

    def make_criterion(self, network: Any) -> Any:
        """A fresh ultralytics criterion for ``network`` (``v8DetectionLoss``, or ``E2ELoss`` for end-to-end heads)."""
        if not isinstance(getattr(network, "args", None), SimpleNamespace):
            network.args = self._hyp()
        criterion = network.init_criterion()
        hyp = self._hyp()
        for part in (criterion, getattr(criterion, "one2many", None), getattr(criterion, "one2one", None)):
            if part is not None and hasattr(part, "hyp"):
                part.hyp = hyp
        return criterion

    def compute_loss(self, network: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        """Ultralytics' detection loss of ``network`` on ``images`` against pixel ``targets`` (see module doc).

        Returns ``box*L_box + cls*L_cls + dfl*L_dfl`` (``loss_reduction="mean"``) or that times the batch size
        (``"ultralytics"``), a 0-dim tensor differentiable with respect to ``images`` and the parameters.
        """
        ensure_offline()
        x = self.prepare_images(network, images)
        batch = to_ultralytics_batch(
            targets, x.shape[0], int(x.shape[-2]), int(x.shape[-1]), self.num_classes, device=x.device
        )
        preds = network(x)
        criterion = self.make_criterion(network)
        loss, _items = criterion(preds, batch)
        total = loss.sum()
        if self.loss_reduction == "mean":
            total = total / x.shape[0]
        return total

    def loss_items(self, network: nn.Module, images: torch.Tensor, targets: Any) -> dict[str, float]:
        """The gained ``box``, ``cls``, ``dfl`` terms per image (for logging), without a graph."""
        with torch.no_grad():
            x = self.prepare_images(network, images)
            batch = to_ultralytics_batch(targets, x.shape[0], int(x.shape[-2]), int(x.shape[-1]), device=x.device)
            loss, _ = self.make_criterion(network)(network(x), batch)
        return {name: float(v) / x.shape[0] for name, v in zip(("box", "cls", "dfl"), loss)}

    # ------------------------------------------------------------------ evaluation
    def predict(self, network: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """Detections per image after ultralytics' NMS: ``(n, 6)`` rows ``x0, y0, x1, y1, conf, class`` in pixels.

        Runs ``network`` in eval mode and restores its previous mode (``evaluate`` gets that from the Task base class).
        """
        with eval_mode(network):
            return self._detect(network, images)

    @torch.no_grad()
    def _detect(self, network: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`predict` for a network already in eval mode."""
        from ultralytics.utils.nms import non_max_suppression

        ensure_offline()
        layers: Any = getattr(network, "model", None)
        head: Any = layers[-1] if layers is not None else None
        if head is not None and hasattr(head, "shape"):
            head.shape = None  # rebuild anchors for this device / dtype / size
        preds = network(self.prepare_images(network, images))
        out = non_max_suppression(
            preds,
            self.conf,
            self.iou,
            multi_label=True,
            max_det=self.max_det,
            end2end=bool(getattr(network, "end2end", False)),
        )
        return [o[:, :6] for o in out]

    def evaluate(self, network: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
        """mAP50, mAP75, mAP50:95, precision and recall over ``(images, targets)`` batches, with ultralytics' code."""
        ensure_offline()
        from ultralytics.engine.validator import BaseValidator
        from ultralytics.utils.metrics import DetMetrics, box_iou

        iouv = torch.linspace(0.5, 0.95, 10)
        matcher = SimpleNamespace(iouv=iouv)  # match_predictions only reads self.iouv
        nc = int(self.num_classes or 1)
        metrics = DetMetrics(names=self._names(nc))
        seen = 0
        for images, targets in batches:
            detections = self._detect(network, images)  # eval mode: the base class wraps evaluate
            for det, gt in zip(detections, as_box_list(targets, images.shape[0])):
                det, gt = det.float().cpu(), gt.float().cpu()
                gt_cls, gt_boxes = gt[:, 0], gt[:, 1:5]
                pred_cls, conf = det[:, 5], det[:, 4]
                if gt.shape[0] and det.shape[0]:
                    iou = box_iou(gt_boxes, det[:, :4])
                    tp = BaseValidator.match_predictions(matcher, pred_cls, gt_cls, iou).numpy()  # type: ignore[arg-type]
                else:
                    tp = torch.zeros(det.shape[0], iouv.numel(), dtype=torch.bool).numpy()
                metrics.update_stats(
                    {
                        "tp": tp,
                        "conf": conf.numpy(),
                        "pred_cls": pred_cls.numpy(),
                        "target_cls": gt_cls.numpy(),
                        "target_img": gt_cls.unique().numpy(),
                        "im_name": f"image{seen}",
                    }
                )
                seen += 1
        if seen == 0:
            raise ValueError("evaluate() got no images")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # empty classes give 0/0 inside ap_per_class
            metrics.process(plot=False)
        box = metrics.box
        return {
            "mAP50": float(box.map50),
            "mAP75": float(box.map75),
            "mAP50:95": float(box.map),
            "precision": float(box.mp),
            "recall": float(box.mr),
        }
