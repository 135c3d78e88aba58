"""Card verification values (Visa CVV / Mastercard CVC): CVV1, CVV2 (service code 000), iCVV (999)."""

from __future__ import annotations

from hsm_sim.crypto.des import des_ecb_encrypt, tdes_ecb_encrypt


def generate_cvv(cvk: bytes, pan: str, expiry_yymm: str, service_code: str) -> str:
    """Three digits from the CVK (16 bytes, two DES keys), the PAN, YYMM expiry and service code.

    PAN + expiry + service code, zero-padded to 32 digits, is split into two blocks; block 1 is
    encrypted under key A, XORed with block 2, the result encrypted under A|B (TDES); the first three
    decimal digits of the hex result (then A-F less 10) are the CVV.
    """
    if len(cvk) != 16:
        raise ValueError(f"CVK must be 16 bytes, got {len(cvk)}")
    if not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise ValueError("PAN must be 12 to 19 digits")
    if len(expiry_yymm) != 4 or not expiry_yymm.isdigit():
        raise ValueError("expiry must be 4 digits YYMM")
    if len(service_code) != 3 or not service_code.isdigit():
        raise ValueError("service code must be 3 digits")
    data = (pan + expiry_yymm + service_code).ljust(32, "0")
    block1, block2 = bytes.fromhex(data[:16]), bytes.fromhex(data[16:32])
    step = des_ecb_encrypt(cvk[:8], block1)
    step = bytes(a ^ b for a, b in zip(step, block2))
    result = tdes_ecb_encrypt(cvk, step).hex().upper()
    digits = [c for c in result if c.isdigit()]
    if len(digits) < 3:
        digits += [str(int(c, 16) - 10) for c in result if not c.isdigit()]
    return "".join(digits[:3])
