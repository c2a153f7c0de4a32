"""Calibration: raw counts to attenuation, Zeff and material, and the operator's view.

- :mod:`~nii.calibrate.profile`: calibration profiles built from a scanner's
  dark, air and step-wedge (or CT air/water) acquisitions; ``nii calibrate``.
- :mod:`~nii.calibrate.correct`: offset/gain, bad elements, attenuation,
  opaque flags, aspect, HU; :class:`~nii.calibrate.correct.Calibrator`.
- :mod:`~nii.calibrate.material`: dual-energy Zeff and areal density.
- :mod:`~nii.calibrate.palette`, :mod:`~nii.calibrate.render`: the operator's
  pseudo-colour and image tools; :mod:`~nii.calibrate.archive`: estimates
  from archived pseudo-colour images.
- :mod:`~nii.calibrate.calibrated`: the :class:`CalibratedScan` they hand on.
"""
