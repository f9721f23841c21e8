"""The CSGD statistical ensemble: censored shifted gamma distributions of truth given IMERG, fit on real pairs,
sampled with space-time correlated noise (the STREAM-Sat approach; Scheuerer & Hamill 2015, Hartke et al. 2022).

    from nrt.csgd import load_params, csgd_ensemble
    params = load_params("builtin:csgd")
    ens = csgd_ensemble(rate, params, members=30, cell_km=(dy_km, dx_km), seed=0)

Modules: distribution (the CSGD: CDF, quantiles, CRPS), regression (its parameters given IMERG), fit (minimum
CRPS fit), correlation (the errors' space-time correlation), noise (correlated Gaussian fields), ensemble
(members), params (the versioned JSON file), pairs (reading IMERG/truth netCDF pairs).
"""

from nrt.csgd.ensemble import csgd_ensemble
from nrt.csgd.params import load_params, save_params
from nrt.csgd.regression import CsgdParams

__all__ = ["CsgdParams", "csgd_ensemble", "load_params", "save_params"]
