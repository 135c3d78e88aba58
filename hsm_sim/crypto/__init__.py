"""Pure payment cryptography: bytes in, bytes out, no key store and no I/O.

des        DES/TDES/AES blocks, KCV, DES parity          pinblock   ISO 9564 formats 0, 1, 3, 4
pin        IBM 3624 offset, Visa PVV                     cvv        CVV, CVV2 (000), iCVV (999)
dukpt      X9.24-1 TDES DUKPT                            dukpt_aes  X9.24-3 AES DUKPT
emv        ICC MK, session keys, ARQC, ARPC by CVN       mac        retail MAC, AES-CMAC
tokens     PAN fingerprint (HMAC), PAN sealing (AES-GCM)

Every function validates its inputs and raises ValueError (PinBlockError for PIN blocks) with a
message that names the input and never its value.
"""
