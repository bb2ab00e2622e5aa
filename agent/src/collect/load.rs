//! Load average over 1, 5 and 15 minutes (absent on platforms without one).

use hostpulse_proto::Load;
use sysinfo::System;

pub(super) fn collect() -> Result<Load, sysinfo::Error> {
    let l = System::load_average()?;
    Ok(Load {
        one: l.one,
        five: l.five,
        fifteen: l.fifteen,
    })
}
