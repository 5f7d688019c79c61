"""python -m puller"""
from .cli.entry import main

main()
