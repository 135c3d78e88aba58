"""Card issuing and the issuer side of card payments: ISO 8583 authorization on a double-entry ledger."""
