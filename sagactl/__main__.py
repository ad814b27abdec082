from sagactl.cli import app

app(prog_name="sagactl")
