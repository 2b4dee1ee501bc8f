"""API keys and roles: who may call what (the interceptor is api/auth.py)."""
