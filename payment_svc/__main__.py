from payment_svc.app import SPEC
from payment_svc.settings import Settings
from saga_kit.service import main

main(SPEC, Settings)
