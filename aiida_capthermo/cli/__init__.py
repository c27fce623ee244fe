"""The user's command line ``capthermo`` (also ``verdi data capthermo``): needs an AiiDA profile. The compute-side
console scripts the jobs run are :mod:`aiida_capthermo.compute`."""
