"""Evidence packages: one signed archive per case, for investigators and courts (issue #10).

:func:`export_case` writes the case's scans exactly as received, results,
TDRs, decisions, audit excerpt, models, calibration and a printable report,
with a manifest of sha256 hashes signed by the site's Ed25519 key;
:func:`verify_package` checks every hash and the signature.
"""

from nii.evidence.keys import fingerprint, load_private_key, load_public_key, site_key
from nii.evidence.package import FORMAT, EvidenceError, Exported, export_case
from nii.evidence.verify import Verification, verify_package

__all__ = ["FORMAT", "EvidenceError", "Exported", "Verification", "export_case", "fingerprint",
           "load_private_key", "load_public_key", "site_key", "verify_package"]
