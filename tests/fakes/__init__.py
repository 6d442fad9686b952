"""Local HTTP servers that speak the real APIs of Gitea, Plane and Telegram."""
