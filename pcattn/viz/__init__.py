"""Attention visualisation: extraction, per-point values, colours, pictures, ``.ply`` files, training plots.

The pipeline, one function per step::

    record = extract_attention(model, pos)                 # one forward pass, every attention layer recorded
    layer = select_layer(record.layers, 0)                 # by index or by module name
    values = point_values(layer, pos, mode="query", query=17)   # (P,) values on the INPUT points
    colors = values.colors()                               # (P, 3) viridis (grey outside the neighbourhood)
    images = render_views(pos, colors, views=3, highlight=values.query_point, neighborhood=values.neighborhood)
    compose_figure([FigureRow(images, "layer 0", values.vmin, values.vmax, values.label)], path="attention.png")
    write_ply("attention.ply", pos, colors)

or all of it at once with :func:`attention_picture` (:func:`checkpoint_picture` for trained
checkpoints, as ``pcattn visualize`` does; classifiers and part segmenters alike). A part
segmenter's predicted parts, true parts and wrong points are drawn by :func:`parts_picture`
(:func:`checkpoint_parts_picture` for a checkpoint, ``pcattn visualize --mode parts``); a room's predicted
classes, true classes and wrong points, from above and in perspective, by :func:`semseg_picture`
(:func:`checkpoint_semseg_picture`, ``pcattn visualize --mode semseg``), and the attention of a point of
a room, zoomed around it, by :func:`checkpoint_room_attention`. Rendering uses Open3D's headless
``OffscreenRenderer`` (software Vulkan from Debian's ``mesa-vulkan-drivers``); when it is not
available a matplotlib scatter renderer draws the same picture (``backend="matplotlib"``, or
automatically with a warning for ``backend="auto"``). Open3D and matplotlib are imported lazily.

:func:`plot_run` draws a training run's loss/accuracy curves and confusion matrix.

Modules, each importing only those above it:

* :mod:`~pcattn.viz.extract`: recording the attention layers of a forward pass, choosing a layer;
* :mod:`~pcattn.viz.values`: per-point values and colours;
* :mod:`~pcattn.viz.render`: cameras, the Open3D and matplotlib renderers;
* :mod:`~pcattn.viz.figures`: composed pictures, :func:`attention_picture`, ``.ply`` files, windows;
* :mod:`~pcattn.viz.parts`: part colours and part-segmentation pictures;
* :mod:`~pcattn.viz.scenes`: class colours and pictures of rooms (semantic segmentation);
* :mod:`~pcattn.viz.checkpoint`: pictures of trained checkpoints (their input and predictions);
* :mod:`~pcattn.viz.plots`: training plots (independent of the rest).

(:func:`load_cloud` and :func:`prepare_cloud` live in :mod:`pcattn.data.cloud`.)
"""
from ..data.cloud import load_cloud, prepare_cloud
from ..deprecation import renamed_attributes
from .checkpoint import (SCENE_DATASETS, CheckpointInput, CheckpointPartsPicture, CheckpointPicture,
                         CheckpointScenePicture, RoomAttentionPicture, RoomInput, SceneSegmentation, Segmentation,
                         TrainedModel, checkpoint_input, checkpoint_parts_picture, checkpoint_picture, checkpoint_room,
                         checkpoint_room_attention, checkpoint_semseg_picture, load_trained_models, predictions,
                         segment, segment_scene)
from .extract import (AttentionExtraction, LayerAttention, attention_layer_names, extract_attention, reduce_groups,
                      select_layer)
from .figures import (AttentionPicture, FigureRow, RowResult, attention_picture, compose_figure, has_display,
                      show_interactive, write_ply)
from .parts import (RIGHT_COLOR, WRONG_COLOR, PartsPicture, error_colors, part_colors, part_legend, part_palette,
                    parts_picture)
from .plots import plot_run
from .scenes import (MAX_DRAWN_POINTS, PERSPECTIVE_VIEWS, TOP_VIEW, UNLABELLED_COLOR, DrawnPoints, ScenePicture,
                     class_legend, class_palette, drawn_points, label_colors, scene_error_colors, semseg_picture)
from .render import (BACKENDS, BACKGROUND, DEBIAN_RENDER_PACKAGES, RENDER_HELP, RenderingUnavailable,
                     open3d_rendering_available, render_views, view_angles)
from .values import INACTIVE_COLOR, MODES, QUERY_COLOR, PointValues, colorize, point_values

__all__ = [
    "LayerAttention",
    "AttentionExtraction",
    "PointValues",
    "FigureRow",
    "RowResult",
    "AttentionPicture",
    "RenderingUnavailable",
    "attention_layer_names",
    "extract_attention",
    "select_layer",
    "reduce_groups",
    "point_values",
    "colorize",
    "view_angles",
    "render_views",
    "compose_figure",
    "attention_picture",
    "write_ply",
    "show_interactive",
    "has_display",
    "prepare_cloud",
    "load_cloud",
    "open3d_rendering_available",
    "plot_run",
    "TrainedModel",
    "CheckpointInput",
    "CheckpointPicture",
    "load_trained_models",
    "checkpoint_input",
    "predictions",
    "checkpoint_picture",
    "Segmentation",
    "CheckpointPartsPicture",
    "segment",
    "checkpoint_parts_picture",
    "PartsPicture",
    "part_palette",
    "part_colors",
    "error_colors",
    "part_legend",
    "parts_picture",
    "SCENE_DATASETS",
    "RoomInput",
    "SceneSegmentation",
    "CheckpointScenePicture",
    "RoomAttentionPicture",
    "checkpoint_room",
    "segment_scene",
    "checkpoint_semseg_picture",
    "checkpoint_room_attention",
    "ScenePicture",
    "DrawnPoints",
    "semseg_picture",
    "class_palette",
    "class_legend",
    "label_colors",
    "scene_error_colors",
    "drawn_points",
    "UNLABELLED_COLOR",
    "TOP_VIEW",
    "PERSPECTIVE_VIEWS",
    "MAX_DRAWN_POINTS",
    "WRONG_COLOR",
    "RIGHT_COLOR",
    "QUERY_COLOR",
    "INACTIVE_COLOR",
    "BACKGROUND",
    "MODES",
    "BACKENDS",
    "DEBIAN_RENDER_PACKAGES",
    "RENDER_HELP",
]

__getattr__ = renamed_attributes(__name__, {"load_classifiers": "load_trained_models",
                                            "TrainedClassifier": "TrainedModel"}, globals())
