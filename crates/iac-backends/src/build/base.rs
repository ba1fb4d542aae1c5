//! Base images made on demand: [`BaseImageMaker`], the hook the image builder calls when a build
//! needs the base image of a Python minor (and its wheelhouse) that the engine does not have yet —
//! e.g. the first deploy of a repo whose `.python-version` says 3.14. The `iac` binary implements
//! it by running its embedded bootstrap recipe (`scripts/bootstrap-images.sh --only-python
//! --python X.Y`), which builds the offline image from Debian and downloads the wheelhouse once;
//! later builds find both and skip this.

use async_trait::async_trait;

use iac_core::Events;

use super::config::PythonChoice;

/// Makes the offline base image of a Python minor and its wheelhouse exist.
#[async_trait]
pub trait BaseImageMaker: Send + Sync {
    /// Ensures `python.offline_image` (or the official `python.image`) is on the engine and the
    /// wheelhouse for `python` is filled. Progress goes to `events`; the error says what failed.
    async fn make(&self, python: &PythonChoice, events: &Events) -> Result<(), String>;
}
