"""The page's npm packages at /static/vendor/: only the three packages, only inside them."""
import pytest

from deployments.api.errors import ServiceError
from deployments.router import PAGE_CSP, STATIC_DIR, VENDOR_DIR, import_map_hash, vendor_file

needs_npm = pytest.mark.skipif(not (VENDOR_DIR / "three").is_dir(),
                               reason="npm ci --prefix deployments/static has not run (.ci/setup runs it)")


@needs_npm
@pytest.mark.parametrize("path", ["three/build/three.module.js", "@met4citizen/talkinghead/modules/talkinghead.mjs",
                                  "three/examples/jsm/loaders/GLTFLoader.js"])
def test_the_page_s_modules_are_served(path):
    assert vendor_file(path).media_type == "text/javascript"


@pytest.mark.parametrize("path", ["three/../../index.html", "three/../../../router.py", "left-pad/index.js",
                                  "three/package.json/../../../../etc/passwd", "three/README.md", "three",
                                  "../node_modules/three/build/three.module.js", "/etc/passwd"])
def test_nothing_outside_the_packages_or_of_another_type_is_served(path):
    with pytest.raises(ServiceError) as err:
        vendor_file(path)
    assert err.value.code == "not_found"


def test_the_csp_allows_exactly_the_page_s_import_map():
    digest = import_map_hash(STATIC_DIR / "index.html")
    assert digest.startswith("'sha256-") and f"script-src 'self' {digest};" in PAGE_CSP
    assert "unsafe-inline" not in PAGE_CSP
