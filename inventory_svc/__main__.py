from inventory_svc.app import SPEC
from inventory_svc.settings import Settings
from saga_kit.service import main

main(SPEC, Settings)
