from order_svc.app import SPEC
from order_svc.settings import Settings
from saga_kit.service import main

main(SPEC, Settings)
