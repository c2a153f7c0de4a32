"""The operator service: scans in from scanner hardware, annotated results out to the officer.

``nii serve`` runs, in one process: the analysis workers (:mod:`nii.serve.service`),
the web API and viewer (:mod:`nii.serve.app`), the DICOM C-STORE SCP
(:mod:`nii.serve.dicom_scp`) and the hot folder (:mod:`nii.serve.hotfolder`),
over one data folder (:mod:`nii.serve.store`).
"""
