"""Detection: calibrated scans in, regions (potential threat objects) out.

- :mod:`~nii.detect.regions`: :class:`Region`, :class:`ModelIdentity`, the
  threat classes and their DICOS threat categories, the :class:`Detector`
  interface every model and rule implements.
- :mod:`~nii.detect.registry`: versioned model artifacts under ``models/``,
  hash-verified on load.
- :mod:`~nii.detect.contraband`: the supervised contraband detector (FCOS).
- :mod:`~nii.detect.datasets`: box and image-level data sets (Pascal VOC,
  YOLO, COCO, simulated, ``clear/`` + ``threat/`` folders).
- :mod:`~nii.detect.train`, :mod:`~nii.detect.evaluate`: ``nii train`` and
  ``nii evaluate``.
"""
