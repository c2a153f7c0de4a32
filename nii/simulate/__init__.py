"""The data engine: a physics-based scanner simulator and threat image projection.

Recipe, one module a step:

1. :mod:`~nii.simulate.scenes` draws a bag, parcel, container or CT bag
   (:mod:`~nii.simulate.scene` holds its data objects, with exact ground
   truth; :mod:`~nii.simulate.shapes` the rasterisers).
2. :mod:`~nii.simulate.physics` gives attenuation (xraydb) and spectra;
   :mod:`~nii.simulate.scanner` loads a virtual scanner and integrates
   Beer-Lambert over each channel's spectrum.
3. :mod:`~nii.simulate.detector` turns transmission into counts with noise,
   non-uniformity and drift, and makes calibration acquisitions.
4. :mod:`~nii.simulate.engine` joins them into scans and data sets
   (``nii simulate``); :mod:`~nii.simulate.annotations` writes the ground
   truth.
5. :mod:`~nii.simulate.tip` projects threats into existing scans;
   :mod:`~nii.simulate.composites` makes data sets of them (``nii tip``).

Modules are imported where they are used, so ``import nii`` stays light.
"""
