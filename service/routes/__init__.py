"""One APIRouter per concern; service/app.py includes them."""
