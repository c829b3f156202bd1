//! The IPVS backend (`--proxy-mode ipvs`) lives here; see issue "IPVS backend".
//! Until it lands, selecting ipvs mode is refused with a clear error at startup.
