"""Who may read what: stream policies, CORS, tokens, revocation, and the access log."""
